// The Generate page: follow the base model, size presets, Ctrl+Enter, the strength readout, the
// subject helper and the input image (its thumbnail, "remove", and telling the mask painter).
// The form works without this file; it only makes the page quicker to use.
(function () {
  const form = document.querySelector("form.generate-form");
  if (!form) return;
  const field = (name) => document.getElementById("id_" + name);
  const prompt = field("prompt");

  // Size presets; "from input" blanks the size so it follows the input image.
  document.addEventListener("click", (e) => {
    const size = e.target.dataset && e.target.dataset.size;
    if (!size) return;
    const [w, h] = size === "x" ? ["", ""] : size.split("x");
    field("width").value = w; field("height").value = h;
  });

  // Ctrl+Enter (Cmd+Enter on a Mac) anywhere in the form generates. requestSubmit fires "submit",
  // so the mask painter writes its mask first.
  form.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });

  const strength = field("strength"), readout = document.getElementById("strength-value");
  if (strength && readout) strength.addEventListener("input", () => { readout.textContent = strength.value; });

  // The subject helper puts the subject's LoRA tag and its token into the prompt.
  const helper = document.getElementById("subject-helper");
  if (helper) helper.addEventListener("change", () => {
    const option = helper.selectedOptions[0];
    if (!option || !option.value) return;
    let text = prompt.value.trim();
    if (!text) text = "a photo of " + option.dataset.words;
    else if (!text.includes(option.dataset.words)) text += ", " + option.dataset.words;
    if (!text.includes(option.dataset.tag)) text += " " + option.dataset.tag;
    prompt.value = text;
    helper.value = "";
    prompt.focus();
  });

  // A base model picked: its defaults, size limits and presets, and only the subjects of its family.
  const select = field("base_model");
  if (select && select.tagName === "SELECT") {
    const follow = (changed) => {
      const model = JSON.parse(select.selectedOptions[0].dataset.model);
      if (changed) for (const [name, value] of Object.entries(model.defaults)) { if (field(name)) field(name).value = value; }
      for (const name of ["width", "height"]) { field(name).min = model.min_size; field(name).max = model.max_size; }
      if (helper) for (const option of helper.options) {
        option.hidden = option.disabled = !!option.dataset.family && option.dataset.family !== model.family;
      }
      if (!changed) return;
      const presets = document.getElementById("size-presets");
      presets.querySelectorAll("button:not([data-size=x])").forEach((b) => b.remove());
      for (const [w, h] of model.presets) {
        const b = document.createElement("button");
        b.type = "button"; b.className = "chip"; b.dataset.size = w + "x" + h; b.textContent = w + "×" + h;
        presets.insertBefore(b, presets.querySelector("[data-size=x]"));
      }
    };
    select.addEventListener("change", () => follow(true));
    follow(false);
  }

  // The input image: a gallery image (hidden source_image) or a chosen file. Either shows as a
  // thumbnail with "remove"; the mask painter hears of each change ("studio:input", detail = URL or
  // null) and reads the page's first input (and the job's mask) from #input-thumb itself.
  const upload = field("init_image"), source = field("source_image"), earlier = field("input_job");
  const chosen = document.getElementById("chosen-input"), thumb = document.getElementById("input-thumb");
  const label = document.getElementById("input-name");
  let objectUrl = null;
  const announce = (url) => document.dispatchEvent(new CustomEvent("studio:input", { detail: url }));
  function show(url, full, text) {
    thumb.src = url; thumb.dataset.full = full; label.textContent = text;
    chosen.hidden = false;
    announce(full);
  }
  if (upload) upload.addEventListener("change", () => {
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    const file = upload.files[0];
    if (!file) { if (!source.value && !earlier.value) { chosen.hidden = true; announce(null); } return; }
    objectUrl = URL.createObjectURL(file);
    source.value = earlier.value = "";  // a file chosen here replaces the gallery image or the last job's input
    field("width").value = ""; field("height").value = "";  // the size follows the input
    show(objectUrl, objectUrl, file.name);
  });
  // An image dropped on the input section becomes the input (elsewhere on the form a PNG fills the
  // settings: static/js/png-settings.js); the section keeps the drop to itself.
  const section = document.getElementById("input-section");
  if (upload && section) {
    section.addEventListener("dragover", (e) => { e.preventDefault(); e.stopPropagation(); section.classList.add("dropping"); });
    section.addEventListener("dragleave", () => section.classList.remove("dropping"));
    section.addEventListener("drop", (e) => {
      e.stopPropagation();
      section.classList.remove("dropping");
      const file = e.dataTransfer.files[0];
      if (!file || !file.type.startsWith("image/")) return;
      e.preventDefault();
      const transfer = new DataTransfer();
      transfer.items.add(file);
      upload.files = transfer.files;
      upload.dispatchEvent(new Event("change"));
    });
  }
  document.getElementById("input-remove").addEventListener("click", () => {
    if (upload) upload.value = "";
    source.value = earlier.value = "";
    chosen.hidden = true;
    thumb.removeAttribute("src");
    announce(null);
  });
})();
