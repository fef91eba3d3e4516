// A model's Markdown as safe HTML: marked renders, DOMPurify sanitizes, highlight.js colours code.
// Whatever a model writes (script tags, event handlers, remote images) never runs or loads: the
// sanitizer drops it, and the page's Content-Security-Policy allows nothing outside this origin.

import { marked } from "../vendor/marked.esm.js";
import DOMPurify from "../vendor/purify.es.js";
import hljs from "../vendor/highlight.min.js";

// Raw HTML in a model's answer is shown as text, never parsed: only Markdown makes elements.
const escapeHtml = (text) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
marked.use({ gfm: true, breaks: true, renderer: { html: ({ text }) => escapeHtml(text) } });
hljs.configure({ ignoreUnescapedHTML: true });

// Links open in a new tab without handing over this page; images from elsewhere are dropped.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
  if (node.tagName === "IMG") {
    const src = node.getAttribute("src") ?? "";
    if (!src.startsWith("data:image/")) node.removeAttribute("src");
  }
});

export function renderMarkdown(element, text) {
  element.innerHTML = DOMPurify.sanitize(marked.parse(text ?? ""), { FORBID_TAGS: ["style", "form", "input"], FORBID_ATTR: ["style"] });
  for (const block of element.querySelectorAll("pre > code")) {
    const language = [...block.classList].find((name) => name.startsWith("language-"))?.slice(9);
    if (language && !hljs.getLanguage(language)) block.classList.remove(`language-${language}`);  // guess instead
    hljs.highlightElement(block);
    addCopyButton(block.parentElement);
  }
}

function addCopyButton(pre) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = "Copy";
  button.setAttribute("aria-label", "Copy the code");
  button.addEventListener("click", async () => {
    const code = pre.querySelector("code")?.innerText ?? "";
    try {
      await navigator.clipboard.writeText(code);
      button.textContent = "Copied";
    } catch {
      button.textContent = "Select and copy";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
  pre.append(button);
}
