// Holdfast console: copy buttons, and nothing else. Every page works without this script.
"use strict";

document.documentElement.classList.remove("no-js");

function selectText(element) {
  const range = document.createRange();
  range.selectNodeContents(element);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

function announce(button, text) {
  const label = button.dataset.label || button.textContent;
  button.dataset.label = label;
  button.textContent = text;
  window.setTimeout(function () { button.textContent = label; }, 2000);
}

function copyFallback(button, source) {
  // Without the clipboard API (plain http, older browsers): select the text, so a
  // keyboard copy takes it, and try the old command.
  selectText(source);
  let copied = false;
  try {
    copied = document.execCommand("copy");
  } catch (error) {
    copied = false;
  }
  announce(button, copied ? "Copied" : "Selected: press Ctrl+C");
}

document.addEventListener("click", function (event) {
  const button = event.target.closest("button.copy[data-copy]");
  if (!button) {
    return;
  }
  const source = document.getElementById(button.dataset.copy);
  if (!source) {
    return;
  }
  const text = source.textContent;
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(
      function () { announce(button, "Copied"); },
      function () { copyFallback(button, source); }
    );
  } else {
    copyFallback(button, source);
  }
});
