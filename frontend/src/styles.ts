/** The dashboard's style sheet (inserted once as a <style> element's text). */

export const STYLES = `
:root { color-scheme: light; }
body { margin: 0; font-family: Roboto, "Helvetica Neue", Arial, sans-serif; font-size: 13px; color: #212121; background: #f5f5f5; }
.aevis { padding: 12px 16px 32px; }
.aevis h2 { font-size: 15px; font-weight: 500; margin: 0 0 8px; }
.aevis h3 { font-size: 14px; font-weight: 500; margin: 4px 0 8px; }
.aevis h4 { font-size: 13px; font-weight: 500; margin: 12px 0 6px; }
.controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-end; margin-bottom: 8px; }
.control { display: flex; flex-direction: column; gap: 2px; font-size: 11px; color: #616161; }
.control select { font-size: 13px; padding: 3px 4px; min-width: 120px; }
.datapaths { display: flex; flex-wrap: wrap; gap: 4px 12px; align-items: center; }
.datapaths label { display: inline-flex; gap: 4px; align-items: center; font-size: 12px; color: #212121; }
.swatch { display: inline-block; width: 14px; height: 4px; border-radius: 2px; background: #9e9e9e; border: 2px solid transparent; box-sizing: border-box; }
.treemap-legend .swatch { height: 10px; background: transparent; }
.messages > div { padding: 8px 12px; margin: 6px 0; border-radius: 4px; white-space: pre-wrap; }
.message.error { background: #ffebee; color: #b71c1c; border: 1px solid #ef9a9a; }
.message.warning { background: #fff8e1; color: #6d4c00; border: 1px solid #ffe082; }
.message.info { background: #e3f2fd; color: #0d47a1; border: 1px solid #90caf9; }
.panel { background: #fff; border-radius: 4px; box-shadow: 0 1px 3px rgba(0,0,0,0.15); padding: 10px 12px; margin-top: 10px; position: relative; }
.panel-head { display: flex; align-items: center; gap: 8px; flex-wrap: wrap; margin-bottom: 6px; }
.panel-head .spacer { flex: 1; }
button { font: inherit; font-size: 12px; padding: 3px 9px; border: 1px solid #bdbdbd; border-radius: 3px; background: #fafafa; cursor: pointer; }
button:hover { background: #eeeeee; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12px; align-items: center; }
.legend .item { display: inline-flex; gap: 5px; align-items: center; }
.legend .marker-key { font-weight: 500; }
.legend .marker-key.diverging { color: #c62828; }
.legend .marker-key.merging { color: #2e7d32; }
.network { position: relative; border: 1px solid #e0e0e0; border-radius: 3px; overflow: hidden; }
.network-svg { display: block; cursor: grab; user-select: none; touch-action: none; }
.minimap { position: absolute; right: 8px; bottom: 8px; border: 1px solid #bdbdbd; background: #fafafa; box-shadow: 0 1px 3px rgba(0,0,0,0.2); cursor: crosshair; }
.graph-node:hover rect { filter: brightness(0.95); }
.tooltip { position: absolute; z-index: 5; pointer-events: none; background: rgba(33,33,33,0.92); color: #fff; padding: 6px 8px; border-radius: 4px; font-size: 12px; max-width: 320px; }
.tooltip table { border-collapse: collapse; margin-top: 4px; }
.tooltip td, .tooltip th { padding: 1px 6px 1px 0; text-align: left; font-weight: normal; }
.tooltip th { color: #bdbdbd; }
.tooltip .num { text-align: right; font-variant-numeric: tabular-nums; }
.tooltip-title { font-weight: 500; }
.tooltip-hint { color: #bdbdbd; margin-top: 4px; }
.tooltip-marker.diverging { color: #ef9a9a; }
.tooltip-marker.merging { color: #a5d6a7; }
.treemap-canvas { position: relative; display: inline-block; }
.treemap-legend { font-size: 12px; margin-top: 6px; }
.treemap-legend .set-list { margin: 4px 0 0; padding: 0; list-style: none; display: flex; flex-wrap: wrap; gap: 2px 14px; }
.treemap-legend li { display: inline-flex; gap: 5px; align-items: center; }
.fill-key { display: inline-block; width: 12px; height: 12px; margin-right: 5px; vertical-align: -2px; border: 1px solid #9e9e9e; }
.fill-key.solid { background: #ff7f0e; opacity: 0.75; }
.fill-key.faded { background: #ff7f0e; opacity: 0.35; }
.fill-key.dotted { background-image: radial-gradient(#37474f 1.1px, transparent 1.2px); background-size: 4px 4px; }
.neuron-examples { display: flex; flex-wrap: wrap; gap: 10px; }
.neuron-example { border: 1px solid #e0e0e0; border-top: 4px solid #9e9e9e; border-radius: 3px; padding: 6px; }
.neuron-example .pair { display: flex; gap: 6px; }
.activation-map { position: relative; }
.activation-canvas { cursor: crosshair; touch-action: none; }
.area-overlay { position: absolute; border: 2px solid #d84315; background: rgba(216,67,21,0.15); pointer-events: none; box-sizing: border-box; }
.neuron-row { display: flex; gap: 14px; align-items: flex-start; flex-wrap: wrap; }
.neuron-row .neuron-examples { flex: 0 1 auto; }
.neuron-row .contribution-result { flex: 1 1 460px; min-width: 420px; max-height: 520px; overflow-y: auto; }
.contribution-controls { display: flex; gap: 8px; align-items: flex-end; flex-wrap: wrap; margin: 4px 0 8px; }
.neuron-example img, .activation-canvas { image-rendering: pixelated; border: 1px solid #eeeeee; }
.card-title { font-weight: 500; margin-bottom: 4px; }
.values, .readout, .range { font-size: 11px; color: #616161; margin-top: 3px; }
.in-path { color: #2e7d32; }
.out-path { color: #9e9e9e; }
.learned-features { display: flex; flex-wrap: wrap; gap: 8px; }
.learned-feature { margin: 0; font-size: 11px; text-align: center; }
.learned-feature .pair { display: flex; gap: 4px; align-items: flex-start; justify-content: center; }
.reference { position: relative; overflow: hidden; line-height: 0; }
.reference img { display: block; }
.learned-feature img { image-rendering: pixelated; }
.learned-feature img.crop { object-fit: contain; background: #fafafa; }
.rf-box { position: absolute; border: 2px solid #ff6f00; box-shadow: 0 0 0 1px rgba(255,255,255,0.8); pointer-events: none; box-sizing: border-box; }
.legend-ramp .ramp { display: inline-block; width: 90px; height: 10px; vertical-align: -1px; background: linear-gradient(to right, rgb(247,252,245), rgb(199,233,192), rgb(116,196,118), rgb(35,139,69), rgb(0,68,27)); }
.note { color: #757575; font-size: 12px; }
.error { color: #b71c1c; }
.summary { font-size: 12px; color: #424242; margin: 2px 0 6px; }
.scale-row { display: flex; gap: 16px; align-items: center; flex-wrap: wrap; font-size: 12px; }
.ramp-number { font-variant-numeric: tabular-nums; margin: 0 4px; }
.neuron-actions { display: flex; gap: 12px; align-items: flex-end; flex-wrap: wrap; }
.neuron-row { display: flex; gap: 14px; align-items: flex-start; flex-wrap: wrap; }
.neuron-row .neuron-examples { flex: 0 1 auto; }
.neuron-row .contribution-result { flex: 1 1 460px; min-width: 420px; max-height: 520px; overflow-y: auto; }
.contribution-controls { display: inline-flex; gap: 8px; align-items: flex-end; flex-wrap: wrap; }
.contribution-tracer { display: flex; gap: 10px; align-items: flex-end; flex-wrap: wrap; margin: 4px 0 8px; }
.contribution-examples { display: inline-flex; gap: 8px; font-size: 12px; color: #212121; }
.contribution-status { min-width: 110px; }
.contribution-list { list-style: none; padding: 0; margin: 6px 0 0; }
.contribution-entry { display: grid; grid-template-columns: 30px 56px 70px 48px 1fr 42px 42px; gap: 8px; align-items: center; padding: 3px 4px; border-bottom: 1px solid #eeeeee; cursor: pointer; }
.contribution-entry:hover, .contribution-entry:focus { background: rgba(255,152,0,0.1); }
.contribution-entry .score-bar { height: 8px; background: #eeeeee; border-radius: 4px; overflow: hidden; }
.contribution-entry .score-bar > span { display: block; height: 100%; background: #ef6c00; }
.contribution-entry .score { font-variant-numeric: tabular-nums; text-align: right; }
.chip { display: inline-block; border: 2px solid #9e9e9e; border-radius: 9px; padding: 0 6px; margin-right: 4px; font-size: 11px; }
.chip.none { border-style: dashed; color: #757575; }
.thumb { width: 40px; height: 40px; image-rendering: pixelated; border: 1px solid #e0e0e0; display: inline-flex; align-items: center; justify-content: center; color: #9e9e9e; }
.score-meaning { font-size: 12px; margin: 4px 0; }
.aevis.dark .contribution-entry { border-color: #555; }
.aevis.dark .contribution-examples { color: #e0e0e0; }
.provenance { color: #37474f; font-style: italic; }
.network-options .control { flex-direction: row; align-items: center; gap: 6px; }
.network-options select { min-width: 0; }
.legend .span-swatch { display: inline-block; width: 22px; height: 12px; background: rgba(255,193,7,0.35); border: 1px solid #ffa000; border-radius: 3px; }
.legend .note { flex-basis: 100%; }
button:disabled { opacity: 0.55; cursor: progress; }
/* Dark mode (TensorBoard's body.dark-mode, mirrored as .dark on our root). */
body:has(.aevis.dark) { background: #303030; color: #e0e0e0; }
.aevis.dark { color: #e0e0e0; }
.aevis.dark .panel { background: #3a3a3a; box-shadow: 0 1px 3px rgba(0,0,0,0.6); }
.aevis.dark .control, .aevis.dark .note, .aevis.dark .summary, .aevis.dark .provenance, .aevis.dark .values, .aevis.dark .readout, .aevis.dark .range { color: #bdbdbd; }
.aevis.dark .datapaths label { color: #e0e0e0; }
.aevis.dark button, .aevis.dark select { background: #4a4a4a; color: #eeeeee; border-color: #666; }
.aevis.dark .network { border-color: #555; }
.aevis.dark .network-svg .background { fill: #262626; }
.aevis.dark .network-svg .chart-frame { fill: #2f2f2f; }
.aevis.dark .network-svg .graph-node rect { fill: #333; }
.aevis.dark .network-svg .graph-node.group rect { fill: #2c2f45; }
.aevis.dark .network-svg text { fill: #e0e0e0; }
.aevis.dark .network-svg .story-label { fill: #ffca28; }
.aevis.dark .network-svg .diff-curve { stroke: #e0e0e0; }
.aevis.dark .minimap { background: #333; }
.aevis.dark .minimap > rect:first-of-type { fill: #333; }
.aevis.dark .treemap-canvas svg > rect:first-child, .aevis.dark .treemap-svg .background { fill: #262626; }
.aevis.dark .neuron-example { border-color: #555; }
.aevis.dark .message.info { background: #1a3550; color: #bbdefb; border-color: #2f5f8f; }
.aevis.dark .message.warning { background: #4a3b00; color: #ffe082; border-color: #7a6100; }
.aevis.dark .message.error { background: #4a1a1a; color: #ffcdd2; border-color: #8f2f2f; }
`;
