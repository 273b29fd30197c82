/** Shapes of the JSON the AEVis backend answers (see tensorboard_plugin_aevis/http_api.md). */

export type Role = "source" | "adversarial" | "target";

export interface ExampleRef {
  index: number;
  name: string;
  role: Role;
}

export interface AnalysisListing {
  name: string;
  methods: string[];
  steps: number[];
  examples: ExampleRef[];
}

export interface RunListing {
  run: string;
  analyses: AnalysisListing[];
}

export interface RunsResponse {
  runs: RunListing[];
  warnings?: string[];
}

export interface ExampleManifest {
  name: string;
  role: Role;
  label: number;
  class_name: string;
  confidence: number;
  gated_label: number;
  binary_label: number;
  label_preserved: boolean;
  true_label: number | null;
  adversarial_score: number | null;
  kept_fraction: number;
  loss_history: number[];
}

export interface LayerManifest {
  name: string;
  channels: number;
  height: number;
  width: number;
}

export interface DivergingMerging {
  adversarial: number;
  source: number;
  target: number;
  diff: number[];
  diverging_layer: number | null;
  merging_layer: number | null;
  detected: boolean;
  r: number;
}

export interface AnalysisManifest {
  format_version: number;
  method: string;
  params: Record<string, unknown>;
  threshold: number;
  examples: ExampleManifest[];
  layers: LayerManifest[];
  distances: Record<string, number[]>;
  diff_curve?: number[] | null;
  diverging_merging?: DivergingMerging | null;
  has_model: boolean;
}

export interface GraphNode {
  id: string;
  label: string;
  op: string;
  module_type?: string | null;
  group: string | null;
  gated_layer: number | null;
}

export interface GraphEdge {
  source: string;
  target: string;
}

export interface GraphGroup {
  id: string;
  label: string;
  parent: string | null;
  gated_layers: number[];
}

export interface GraphData {
  nodes: GraphNode[];
  edges: GraphEdge[];
  groups: GraphGroup[];
}

export interface RiverPath {
  example: number;
  role: Role;
  name: string;
  y: number[];
}

export interface RiverMarker {
  kind: "diverging" | "merging";
  layer: number;
}

export interface RiverData {
  layers: string[];
  layout: "rule" | "least_squares";
  paths: RiverPath[];
  distances: Record<string, number[]>;
  markers: RiverMarker[];
}

export interface TreemapSet {
  members: number[];
  label: string;
  size: number;
  x: number;
  y: number;
  dx: number;
  dy: number;
  parent: number[] | null;
}

export interface TreemapCell {
  channel: number;
  members: number[];
  x: number;
  y: number;
  dx: number;
  dy: number;
  activation_diff: number | null;
  contribution: number | null;
}

export interface TreemapData {
  width: number;
  height: number;
  sets: TreemapSet[];
  cells: TreemapCell[];
  max_abs_activation_diff: number;
}

export interface NeuronExample {
  example: number;
  max_activation: number;
  gate: number;
  in_datapath: boolean;
  activation_map: string | null;
}

export interface LearnedFeature {
  rank: number;
  activation: number;
  url: string;
}

export interface NeuronData {
  layer: string;
  channel: number;
  examples: NeuronExample[];
  learned_features: LearnedFeature[];
}
