// jit-bastion web UI: copy buttons, the time-left countdown and confirm
// prompts. Loaded as a file because the Content-Security-Policy allows
// no inline script.
"use strict";

function copyText(button) {
  const source = document.querySelector(button.dataset.copy);
  if (!source || !navigator.clipboard) {
    return;
  }
  navigator.clipboard.writeText(source.innerText.trim()).then(() => {
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  });
}

function formatLeft(seconds) {
  if (seconds <= 0) {
    return "expired";
  }
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return (h ? h + ":" + pad(m) : m) + ":" + pad(s) + " left";
}

function startCountdown(element) {
  const end = Date.parse(element.dataset.expires);
  const tick = () => {
    const left = Math.max(0, Math.round((end - Date.now()) / 1000));
    element.textContent = formatLeft(left);
    if (left > 0) {
      setTimeout(tick, 1000);
    }
  };
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", () => copyText(button));
  });
  document.querySelectorAll("[data-expires]").forEach(startCountdown);
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
      }
    });
  });
});
