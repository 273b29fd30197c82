/** DOM helpers: elements are built with attributes and text nodes only (never innerHTML). */

export type Child = Node | string | null | undefined | false;

const SVG_NS = "http://www.w3.org/2000/svg";

function append(parent: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  }
}

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number> = {},
  children: Child[] = [],
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  append(node, children);
  return node;
}

export function svgEl<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number> = {},
  children: Child[] = [],
): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  append(node, children);
  return node;
}

/** An SVG <title> (native hover text). */
export function svgTitle(text: string): SVGTitleElement {
  return svgEl("title", {}, [text]);
}

export function clear(node: Node): void {
  while (node.firstChild) node.removeChild(node.firstChild);
}

export function select(
  label: string,
  options: Array<{ value: string; text: string }>,
  value: string,
  onChange: (value: string) => void,
  name: string,
): HTMLLabelElement {
  const control = el("select", { name, "aria-label": label });
  for (const o of options) {
    const option = el("option", { value: o.value }, [o.text]);
    if (o.value === value) option.selected = true;
    control.appendChild(option);
  }
  control.addEventListener("change", () => onChange(control.value));
  return el("label", { class: "control" }, [el("span", {}, [label]), control]);
}

/** Run `callback` after the next frame is rendered: a task queued from requestAnimationFrame runs once that frame's paint is done. */
export function afterNextFrame(callback: () => void): void {
  requestAnimationFrame(() => setTimeout(callback, 0));
}
