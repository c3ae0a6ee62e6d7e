// The mask painter: paint over the input image what should be repainted (inpainting), or extend the
// picture on a side (outpainting). Mouse, pen and touch alike (pointer events). The painted mask is kept in a canvas of the input's own pixel size;
// on submit it becomes a PNG (white = repaint, black = keep) in the form's mask file input, so the
// server receives it as if the user had uploaded it. No library: a canvas and a few handlers.
(function () {
  const root = document.getElementById("mask-editor");
  const form = document.querySelector("form.generate-form");
  const maskInput = document.getElementById("id_mask");
  if (!root || !form || !maskInput) return;

  const el = (tag, props = {}, children = []) => {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  };

  const brush = el("input", { type: "range", min: 1, max: 256, value: 24, id: "mask-brush" });
  const modeButtons = ["paint", "erase"].map((mode) => el("button", { type: "button", className: "chip", textContent: mode[0].toUpperCase() + mode.slice(1) }));
  modeButtons.forEach((b, i) => { b.dataset.mode = ["paint", "erase"][i]; });
  const clearButton = el("button", { type: "button", className: "chip", textContent: "Clear", id: "mask-clear" });
  const invertButton = el("button", { type: "button", className: "chip", textContent: "Invert", id: "mask-invert" });
  const image = el("img", { alt: "The input image under the mask" });
  const canvas = el("canvas", { className: "mask-canvas", id: "mask-canvas" });
  canvas.setAttribute("aria-label", "The mask: paint what should be repainted");
  const stage = el("div", { className: "mask-stage" }, [image, canvas]);
  const note = el("small", { className: "muted", textContent: "Paint what should be repainted (shown in blue). It is sent as the mask when you generate." });
  // Outpainting: each arrow extends the canvas on that side (a quarter of its size, a multiple of 8).
  const extendButtons = [["←", 1, 0, 0, 0], ["↑", 0, 1, 0, 0], ["→", 0, 0, 1, 0], ["↓", 0, 0, 0, 1]].map(([arrow, ...sides]) => {
    const button = el("button", { type: "button", className: "chip", textContent: arrow, title: "Extend the picture this way (outpainting)" });
    button.dataset.extend = sides.join(",");
    button.addEventListener("click", () => extend(...sides));
    return button;
  });
  const tools = el("div", { className: "mask-tools" }, [el("label", { className: "check", textContent: "Brush " }, [brush]), ...modeButtons, clearButton, invertButton,
                                                         el("span", { className: "muted", textContent: "Extend:" }), ...extendButtons]);
  const empty = document.getElementById("mask-editor-empty");
  const editor = el("div", { hidden: true }, [tools, stage, note]);
  root.append(editor);

  const ctx = canvas.getContext("2d");
  const PAINT = [61, 90, 254];  // drawn half-transparent over the input; any colour means "repaint"
  const paintStyle = `rgb(${PAINT.join(", ")})`;
  let mode = "paint", painted = false, last = null;
  let extended = null;  // a canvas with the input extended for outpainting, sent instead of the input

  function setMode(next) {
    mode = next;
    modeButtons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.mode === mode)));
  }
  modeButtons.forEach((b) => b.addEventListener("click", () => setMode(b.dataset.mode)));
  setMode("paint");

  function load(url, maskUrl) {
    painted = false;
    extended = null;
    if (!url) { editor.hidden = true; empty.hidden = false; return; }
    image.onload = () => {
      canvas.width = image.naturalWidth;  // the mask's pixels are the input's pixels
      canvas.height = image.naturalHeight;
      brush.max = Math.max(8, Math.round(Math.max(canvas.width, canvas.height) / 2));
      brush.value = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 12));
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      editor.hidden = false; empty.hidden = true;
      if (maskUrl) loadMask(maskUrl);
    };
    image.src = url;
  }

  // The last job's mask, painted back where it was white, so the next try repaints the same area.
  function loadMask(url) {
    const mask = new Image();
    mask.onload = () => {
      if (mask.naturalWidth !== canvas.width || mask.naturalHeight !== canvas.height) return;
      const scratch = el("canvas", { width: canvas.width, height: canvas.height }).getContext("2d");
      scratch.drawImage(mask, 0, 0);
      const pixels = scratch.getImageData(0, 0, canvas.width, canvas.height);
      const [r, g, b] = PAINT;
      for (let i = 0; i < pixels.data.length; i += 4) {
        const white = pixels.data[i] > 128;
        pixels.data[i] = r; pixels.data[i + 1] = g; pixels.data[i + 2] = b; pixels.data[i + 3] = white ? 255 : 0;
      }
      ctx.putImageData(pixels, 0, 0);
      painted = true;
    };
    mask.src = url;
  }

  // A pointer's position in the canvas's own pixels (it is drawn scaled to the page's width).
  function at(e) {
    const box = canvas.getBoundingClientRect();
    return { x: (e.clientX - box.left) * canvas.width / box.width, y: (e.clientY - box.top) * canvas.height / box.height };
  }
  function stroke(from, to) {
    ctx.globalCompositeOperation = mode === "erase" ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = paintStyle;
    ctx.lineWidth = Number(brush.value);
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x + 0.01, to.y);  // a click without a move still leaves a dot
    ctx.stroke();
    if (mode === "paint") painted = true;
  }
  canvas.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    last = at(e);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const next = at(e);
    stroke(last, next);
    last = next;
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) canvas.addEventListener(type, () => { last = null; });

  clearButton.addEventListener("click", () => { ctx.clearRect(0, 0, canvas.width, canvas.height); painted = false; });
  invertButton.addEventListener("click", () => {
    const copy = el("canvas", { width: canvas.width, height: canvas.height });
    copy.getContext("2d").drawImage(canvas, 0, 0);
    ctx.globalCompositeOperation = "source-over";
    ctx.fillStyle = paintStyle;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.globalCompositeOperation = "destination-out";
    ctx.drawImage(copy, 0, 0);
    ctx.globalCompositeOperation = "source-over";
    painted = true;
  });

  // The input grows by a strip on the chosen sides: the input's edge pixels stretched into it (a
  // start that strength < 1 can keep), and the strip painted, so that it is what gets drawn.
  function extend(left, top, right, bottom) {
    const w = canvas.width, h = canvas.height;
    const step = Math.max(8, Math.round(Math.max(w, h) / 4 / 8) * 8);
    const [dl, dt, dr, db] = [left, top, right, bottom].map((side) => side * step);
    const W = w + dl + dr, H = h + dt + db;
    const input = el("canvas", { width: W, height: H }), g = input.getContext("2d");
    g.drawImage(extended || image, dl, dt);
    if (dl) g.drawImage(input, dl, dt, 1, h, 0, dt, dl, h);
    if (dr) g.drawImage(input, dl + w - 1, dt, 1, h, dl + w, dt, dr, h);
    if (dt) g.drawImage(input, 0, dt, W, 1, 0, 0, W, dt);
    if (db) g.drawImage(input, 0, dt + h - 1, W, 1, 0, dt + h, W, db);
    const mask = el("canvas", { width: W, height: H }), m = mask.getContext("2d");
    m.drawImage(canvas, dl, dt);
    m.fillStyle = paintStyle;
    [[0, 0, dl, H], [dl + w, 0, dr, H], [0, 0, W, dt], [0, dt + h, W, db]].forEach(([x, y, cw, ch]) => cw && ch && m.fillRect(x, y, cw, ch));
    extended = input;
    canvas.width = W; canvas.height = H;
    ctx.drawImage(mask, 0, 0);
    painted = true;
    image.onload = null;
    image.src = input.toDataURL("image/png");
    for (const name of ["width", "height"]) document.getElementById("id_" + name).value = "";  // the size follows the input
  }

  // A canvas as a PNG file. toDataURL is synchronous: the file must be in its input before the submit goes on.
  function pngFile(source, name) {
    const bytes = atob(source.toDataURL("image/png").split(",")[1]);
    const buffer = new Uint8Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) buffer[i] = bytes.charCodeAt(i);
    return new File([buffer], name, { type: "image/png" });
  }
  function put(input, file) {
    const transfer = new DataTransfer();
    transfer.items.add(file);
    input.files = transfer.files;
  }

  // The mask as a PNG: white where painted, black elsewhere, at the input's size.
  function maskFile() {
    const out = el("canvas", { width: canvas.width, height: canvas.height });
    const g = out.getContext("2d");
    g.drawImage(canvas, 0, 0);
    g.globalCompositeOperation = "source-in";  // keep the painted shape, in white
    g.fillStyle = "#fff";
    g.fillRect(0, 0, out.width, out.height);
    g.globalCompositeOperation = "destination-over";  // black behind it
    g.fillStyle = "#000";
    g.fillRect(0, 0, out.width, out.height);
    return pngFile(out, "mask.png");
  }
  form.addEventListener("submit", () => {
    if (editor.hidden) return;
    if (extended) {  // the extended picture replaces whichever input was chosen
      put(document.getElementById("id_init_image"), pngFile(extended, "extended.png"));
      for (const name of ["source_image", "input_job"]) document.getElementById("id_" + name).value = "";
    }
    if (painted) put(maskInput, maskFile());
  });

  document.addEventListener("studio:input", (e) => load(e.detail));
  const thumb = document.getElementById("input-thumb");
  if (thumb && thumb.dataset.full) load(thumb.dataset.full, thumb.dataset.mask);
})();
