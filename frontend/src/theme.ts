/** Follow TensorBoard's theme: its page marks dark mode with `body.dark-mode`; we mirror it as `.dark` on our root. */

/** Keep `root`'s `dark` class equal to the host page's dark mode (the OS preference when the host cannot be read). */
export function followTheme(root: HTMLElement, host: Window): void {
  let body: HTMLElement | null = null;
  try {
    body = host !== window ? host.document.body : null;
  } catch {
    body = null; // a cross-origin parent
  }
  const media = window.matchMedia?.("(prefers-color-scheme: dark)");
  const apply = () => {
    const dark = body ? body.classList.contains("dark-mode") : media?.matches ?? false;
    root.classList.toggle("dark", dark);
    document.documentElement.style.colorScheme = dark ? "dark" : "light";
  };
  apply();
  if (body) new MutationObserver(apply).observe(body, { attributes: true, attributeFilter: ["class"] });
  else media?.addEventListener?.("change", apply);
}
