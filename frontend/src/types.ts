/** Shapes of the JSON the AEVis backend answers (see tensorboard_plugin_aevis/http_api.md). */

export type Role = "source" | "adversarial" | "target";

/** One (analysis name, method) of a run, with the steps it was logged at. */
export interface AnalysisEntry {
  name: string;
  method: string;
  steps: number[];
  /** Steps whose analysis saved a model artifact (contribution analysis possible); absent from older servers. */
  steps_with_model?: number[];
}

export interface RunListing {
  run: string;
  analyses: AnalysisEntry[];
}

export interface RunsResponse {
  runs: RunListing[];
  warnings?: string[];
}

export interface ExampleManifest {
  index: number;
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
  has_graph?: boolean;
  has_activation_maps?: boolean;
  has_learned_features?: boolean;
  warnings?: string[];
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
  /** False when the logged detection did not confirm the pattern (drawn as a candidate). */
  detected?: boolean;
}

export interface RiverData {
  layers: string[];
  layout: "rule" | "least_squares";
  /** Fraction of the band per unit of datapath distance. */
  scale?: number;
  /** Example indices top to bottom. */
  order?: number[];
  paths: RiverPath[];
  /** "l2" (paper) or "rms" (L2 / sqrt(C_l)); absent from older servers (then "l2"). */
  normalization?: "l2" | "rms";
  distances: Record<string, number[]>;
  /** Eq. 9 per layer, in the answer's normalization. */
  diff_curve?: number[] | null;
  markers: RiverMarker[];
}

/** The region of one example's datapath (the shared parts it holds lie inside it). */
export interface TreemapContainer {
  example: number;
  label: string;
  size: number;
  set_size: number;
  x: number;
  y: number;
  dx: number;
  dy: number;
}

/** The channels kept by exactly the datapaths `members`, inside container `parent`. */
export interface TreemapSet {
  members: number[];
  label: string;
  size: number;
  parent: number;
  shared: boolean;
  x: number;
  y: number;
  dx: number;
  dy: number;
}

export interface TreemapCell {
  channel: number;
  members: number[];
  x: number;
  y: number;
  dx: number;
  dy: number;
  activation_diff: number | null;
  /** Per entry of `members`: the fraction of the extraction's K starts that selected this map; null for one start (absent from older servers). */
  stability?: number[] | null;
  contribution: number | null;
}

export interface TreemapData {
  layer: string;
  width: number;
  height: number;
  examples: number[];
  diff: [number, number] | null;
  containers: TreemapContainer[];
  sets: TreemapSet[];
  cells: TreemapCell[];
  max_abs_activation_diff: number;
}

export interface NeuronExample {
  example: number;
  max_activation: number;
  gate: number;
  in_datapath: boolean;
  /** Fraction of the extraction's K starts that selected this map; null for one start. */
  stability?: number | null;
  activation_map: string | null;
}

export interface LearnedFeature {
  rank: number;
  activation: number;
  reference_image: number;
  /** Receptive-field box in the reference image: [y0, x0, y1, x1]. */
  box: [number, number, number, number];
  /** PNG of the crop (the box). */
  url: string;
  /** PNG of the whole reference image the box lies in. */
  reference_url: string;
}

export interface NeuronData {
  layer: string;
  layer_index: number;
  channel: number;
  examples: NeuronExample[];
  learned_features: LearnedFeature[];
}

/** Answer of `POST contribution`: per feature map of `earlier_layer`, its contribution score. */
export interface ContributionData {
  earlier_layer: string;
  target_layer: string | null;
  channel: number | null;
  area: [number, number, number, number] | null;
  mode: string;
  seconds: number;
  scores: number[];
  ranking: ContributionEntry[];
  /** The example indices the contribution was computed for. */
  examples?: number[];
  /** What a score means, in one sentence (newer servers). */
  score_meaning?: string;
  cached?: boolean;
  warnings?: string[];
}

/** One entry of the ranked contribution list (fields after `score` come from newer servers). */
export interface ContributionEntry {
  channel: number;
  score: number;
  rank?: number;
  /** Example indices whose binary datapath at the earlier layer contains this map. */
  in_datapaths?: number[];
  /** `neuron?...` URL relative to the data root. */
  neuron?: string;
  activation_map?: string | null;
  learned_feature?: string | null;
}
