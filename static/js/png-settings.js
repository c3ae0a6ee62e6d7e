// Generate page: drop a PNG anywhere on the form (or choose one) to fill the form from its metadata.
(function () {
  const form = document.querySelector("form.generate-form");
  const input = document.getElementById("png-settings-file");
  const notes = document.getElementById("png-settings-notes");
  if (!form || !input) return;
  const fields = ["prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height", "scheduler",
                  "strength", "mask_blur", "hires_scale", "hires_upscaler", "hires_strength", "hires_steps"];

  function show(lines) {
    notes.replaceChildren(...lines.map((line) => Object.assign(document.createElement("li"), { textContent: line })));
    notes.hidden = !lines.length;
  }

  async function read(file) {
    const body = new FormData();
    body.append("image", file);
    const token = form.querySelector("[name=csrfmiddlewaretoken]").value;
    const response = await fetch(input.dataset.url, { method: "POST", body, headers: { "X-CSRFToken": token } });
    const data = await response.json();
    if (!response.ok) return show([(data.errors && data.errors.image || [data.detail]).join(" ")]);
    if (data.hires_scale === undefined) data.hires_scale = 1;  // made without hires fix: none left on from before
    const fill = () => {
      for (const name of fields) {
        const field = document.getElementById("id_" + name);
        if (field && data[name] !== undefined) field.value = data[name];
      }
    };
    fill();
    const lines = ["Settings read from a " + data.generator + " PNG.", ...data.notes];
    const model = document.getElementById("id_base_model");
    if (data.model && model && model.tagName === "SELECT") {
      const match = [...model.options].find((o) => o.text.toLowerCase().includes(data.model.toLowerCase()));
      if (match) { model.value = match.value; model.dispatchEvent(new Event("change")); }
      else lines.push("Model " + data.model + " is not offered here; the current model is kept.");
      if (match) fill();  // the model's defaults must not overwrite what was read
    } else if (data.model) {  // one model offered: say so when the file's is another
      const current = document.querySelector("#model-line strong");
      if (current && !current.textContent.toLowerCase().includes(data.model.toLowerCase()))
        lines.push("Model " + data.model + " is not offered here; " + current.textContent + " is used.");
    }
    attachSubject(data.subject);
    const strength = document.getElementById("id_strength");
    if (strength) strength.dispatchEvent(new Event("input"));  // its readout
    const hires = document.querySelector("details.hires");
    if (hires && Number(data.hires_scale) > 1) hires.open = true;
    show(lines);
  }

  // The file's subject (the reader's own, found by the API) goes in the form's subject field, shown as
  // the page shows an attached one; a file made without one leaves none attached.
  function attachSubject(pk) {
    const field = document.getElementById("id_subject");
    if (!field) return;
    field.value = pk || "";
    document.getElementById("attached-subject")?.remove();
    if (!pk) return;
    const option = document.querySelector(`#subject-helper option[value="${pk}"]`);
    const line = Object.assign(document.createElement("p"), { className: "muted", id: "attached-subject" });
    const remove = Object.assign(document.createElement("button"), { type: "button", className: "chip", textContent: "remove" });
    remove.addEventListener("click", () => { field.value = ""; line.remove(); });
    line.append("Subject: ", Object.assign(document.createElement("strong"), { textContent: option ? option.text : "#" + pk }),
                " (from the PNG) ", remove);
    (document.querySelector(".subject-helper") || document.getElementById("id_prompt").closest(".field")).after(line);
  }

  input.addEventListener("change", () => input.files[0] && read(input.files[0]));
  form.addEventListener("dragover", (e) => { e.preventDefault(); form.classList.add("dropping"); });
  form.addEventListener("dragleave", () => form.classList.remove("dropping"));
  form.addEventListener("drop", (e) => {
    const file = e.dataTransfer.files[0];
    if (!file) return;
    e.preventDefault();
    form.classList.remove("dropping");
    read(file);
  });
})();
