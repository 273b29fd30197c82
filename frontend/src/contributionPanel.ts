/**
 * The result of contribution analysis (paper Sec. 5.4, Fig. 8): the ranked top-k
 * feature maps of the earlier layer with their score, the datapaths each belongs to, an
 * activation thumbnail and the learned feature; clicking one opens its neuron level.
 */

import { clear, el } from "./dom";
import { formatValue } from "./scales";
import type { ContributionData, ContributionEntry } from "./types";

/** What a score means when the backend does not say (older servers). */
export const SCORE_MEANING = "Score: the gate (0 to 1) that Eq. 7/8 keeps open on this earlier feature map while it closes as many earlier maps as it can and keeps the selected neurons' activation; higher means the selection needs this map more (the mean over the chosen examples).";
export const TOP_K = 10;

export interface ContributionInput {
  answer: ContributionData;
  /** What was traced, in words. */
  label: string;
  names: Map<number, string>;
  colors: Map<number, string>;
  /** URL of a feature map's activation map over `example` (a fallback when the answer has none). */
  activationUrl: (channel: number, example: number) => string;
  /** URL of a feature map's best learned feature (a fallback when the answer has none). */
  learnedUrl: (channel: number) => string;
  onOpen: (channel: number) => void;
}

function thumbnail(url: string | null | undefined, alt: string, cls: string): HTMLElement {
  if (!url) return el("span", { class: `thumb ${cls} none`, title: `no ${alt} logged` }, ["—"]);
  const image = el("img", { class: `thumb ${cls}`, src: url, alt, width: 40, height: 40, loading: "lazy" });
  image.addEventListener("error", () => image.replaceWith(el("span", { class: `thumb ${cls} none`, title: `no ${alt} logged` }, ["—"])));
  return image;
}

export class ContributionPanel {
  readonly element = el("div", { class: "contribution-result" });

  constructor() {
    this.element.hidden = true;
  }

  hide(): void {
    this.element.hidden = true;
    clear(this.element);
  }

  render(input: ContributionInput): number {
    const { answer } = input;
    clear(this.element);
    this.element.hidden = false;
    const entries: ContributionEntry[] = (answer.ranking ?? []).slice(0, TOP_K).map((e, k) => ({ ...e, rank: e.rank ?? k + 1 }));
    const examples = answer.examples ?? [];
    const top = Math.max(1e-12, ...entries.map((e) => Math.abs(e.score)));
    const list = el("ol", { class: "contribution-list" });
    for (const entry of entries) {
      const inPaths = entry.in_datapaths;
      const chips = inPaths === undefined ? [el("span", { class: "note" }, ["datapaths not reported by this server"])]
        : inPaths.length === 0 ? [el("span", { class: "chip none" }, ["in no datapath"])]
          : inPaths.map((i) => el("span", { class: "chip", style: `border-color:${input.colors.get(i) ?? "#9e9e9e"}` }, [input.names.get(i) ?? `#${i}`]));
      const activation = entry.activation_map !== undefined ? entry.activation_map
        : examples.length ? input.activationUrl(entry.channel, examples[0]) : null;
      const learned = entry.learned_feature !== undefined ? entry.learned_feature : input.learnedUrl(entry.channel);
      const item = el("li", { class: "contribution-entry", "data-channel": entry.channel, tabindex: 0, role: "button",
        title: `open feature map ${entry.channel} of ${answer.earlier_layer} at the neuron level` }, [
        el("span", { class: "rank" }, [`#${entry.rank}`]),
        el("span", { class: "channel" }, [`map ${entry.channel}`]),
        el("span", { class: "score-bar" }, [el("span", { style: `width:${Math.round((100 * Math.abs(entry.score)) / top)}%` })]),
        el("span", { class: "score" }, [formatValue(entry.score)]),
        el("span", { class: "chips" }, chips),
        thumbnail(activation, "activation map", "activation"),
        thumbnail(learned, "learned feature", "learned"),
      ]);
      const open = () => input.onOpen(entry.channel);
      item.addEventListener("click", open);
      item.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") open();
      });
      list.appendChild(item);
    }
    const who = examples.length ? ` · computed for ${examples.map((i) => input.names.get(i) ?? `#${i}`).join(", ")}` : "";
    this.element.append(
      el("h4", {}, [`Top ${entries.length} contributing feature maps of ${answer.earlier_layer}`]),
      el("div", { class: "note" }, [`${input.label}${who} · ${answer.mode}, ${formatValue(answer.seconds)} s`]),
      el("div", { class: "score-meaning" }, [answer.score_meaning ?? SCORE_MEANING]),
      el("div", { class: "contribution-head note" }, ["rank · feature map · score · in the datapaths of · activation (first chosen example) · learned feature — click an entry to open it"]),
      list,
    );
    return entries.length;
  }
}
