// hrmedseg serve web page: upload, (box prompts), segment, overlay, legend, download.
// No framework, no build step. State the browser test reads: window.hrmedseg and data-* on #view.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const view = $("view"), ctx = view.getContext("2d");
  const MAX_W = 960, MAX_H = 720;
  const S = {
    models: [], model: null, file: null, preview: null, origW: 0, origH: 0,
    scale: 1, sx: 1, sy: 1, boxes: [], drag: null, dragStart: null, dragPointer: null,
    overlay: null, maskBitmap: null, maskBlob: null, downloadUrl: null,
  };
  // boxes(): the drawn boxes in image pixels, unrounded [[x0, y0, x1, y1], ...]
  const api = window.hrmedseg = { state: "idle", mask: null, readMask: null, boxes: () => S.boxes.map((b) => b.slice()) };

  function setState(state, msg, isError) {
    api.state = state;
    document.body.dataset.state = state;
    const st = $("status");
    st.textContent = msg;
    st.classList.toggle("error", !!isError);
  }

  function headers() {
    const t = $("token").value.trim();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  async function errorText(resp) {
    try { const j = await resp.json(); return j.error || resp.statusText; } catch (e) { return resp.status + " " + resp.statusText; }
  }

  async function loadModels() {
    const r = await fetch("/v1/models", { headers: headers() });
    if (!r.ok) { setState("error", "Cannot list models: " + (await errorText(r)), true); return; }
    const j = await r.json();
    S.models = j.models;
    const sel = $("model");
    sel.innerHTML = "";
    for (const m of S.models) {
      const o = document.createElement("option");
      o.value = m.name; o.textContent = m.name + (m.box_prompts ? " (box prompts)" : "");
      if (m.default) o.selected = true;
      sel.appendChild(o);
    }
    selectModel();
  }

  function selectModel() {
    S.model = S.models.find((m) => m.name === $("model").value) || S.models[0];
    if (!S.model) return;
    $("model-info").textContent = `${S.model.class_names.length} classes · input ${S.model.input_size.join("×")} · ${S.model.device}`;
    $("box-tools").hidden = !S.model.box_prompts;
    view.classList.toggle("boxes", !!S.model.box_prompts);
    if (!S.model.box_prompts) S.boxes = [];
    renderLegend(null);
    render();
  }

  function renderLegend(classes) {
    const ul = $("legend"); ul.innerHTML = "";
    if (!S.model) return;
    S.model.class_names.forEach((name, k) => {
      const li = document.createElement("li");
      const sw = document.createElement("span"); sw.className = "swatch";
      const c = S.model.colors[k] || [0, 0, 0];
      sw.style.background = k === 0 ? "transparent" : `rgb(${c[0]},${c[1]},${c[2]})`;
      const label = document.createElement("span"); label.textContent = name;
      const area = document.createElement("span"); area.className = "area";
      if (classes && classes[k]) area.textContent = (100 * classes[k].fraction).toFixed(1) + " %";
      li.append(sw, label, area); ul.appendChild(li);
    });
  }

  function fitCanvas() {
    const wrap = document.getElementById("canvas-wrap");
    const maxW = Math.max(240, Math.min(MAX_W, wrap.clientWidth - 20));
    const maxH = Math.max(240, Math.min(MAX_H, window.innerHeight - wrap.getBoundingClientRect().top - 40));
    const s = Math.min(4, maxW / S.origW, maxH / S.origH);
    S.scale = s;
    view.width = Math.max(1, Math.round(S.origW * s));
    view.height = Math.max(1, Math.round(S.origH * s));
    // the canvas is rounded to whole pixels: map image <-> canvas with its exact per-axis ratio
    S.sx = view.width / S.origW; S.sy = view.height / S.origH;
  }

  // EXIF orientation (1-8) of a JPEG (APP1 Exif) or PNG (eXIf chunk), 1 when there is none.
  // Browsers apply it when decoding (createImageBitmap ignores imageOrientation "none"), but the
  // server segments the stored pixels as `hrmedseg predict` does, so such files are previewed by
  // the server instead: otherwise boxes and the mask overlay would be rotated against the image.
  async function exifOrientation(file) {
    try {
      const b = new DataView(await file.slice(0, 256 << 10).arrayBuffer());
      const tiff = (o, end) => {
        if (o + 8 > end) return 1;
        const le = b.getUint16(o) === 0x4949;
        if (!le && b.getUint16(o) !== 0x4d4d) return 1;
        const ifd = o + b.getUint32(o + 4, le);
        if (ifd + 2 > end) return 1;
        const n = b.getUint16(ifd, le);
        for (let i = 0; i < n; i++) {
          const e = ifd + 2 + 12 * i;
          if (e + 12 > end) break;
          if (b.getUint16(e, le) === 0x0112) return b.getUint16(e + 8, le) || 1;
        }
        return 1;
      };
      if (b.byteLength > 4 && b.getUint16(0) === 0xffd8) {  // JPEG: walk the markers up to SOS
        let o = 2;
        while (o + 4 <= b.byteLength && b.getUint8(o) === 0xff) {
          const marker = b.getUint8(o + 1), len = b.getUint16(o + 2);
          if (marker === 0xda || marker === 0xd9) break;
          if (marker === 0xe1 && o + 10 <= b.byteLength && b.getUint32(o + 4) === 0x45786966 && b.getUint16(o + 8) === 0)
            return tiff(o + 10, Math.min(b.byteLength, o + 2 + len));
          o += 2 + len;
        }
      } else if (b.byteLength > 8 && b.getUint32(0) === 0x89504e47) {  // PNG: chunks before IDAT
        let o = 8;
        while (o + 8 <= b.byteLength) {
          const len = b.getUint32(o), type = b.getUint32(o + 4);
          if (type === 0x49444154) break;  // IDAT
          if (type === 0x65584966) return tiff(o + 8, Math.min(b.byteLength, o + 8 + len));  // eXIf
          o += 12 + len;
        }
      }
    } catch (e) { /* unreadable: let the decoders decide */ }
    return 1;
  }

  async function openFile(file) {
    if (!file) return;
    S.file = file; S.boxes = []; S.overlay = null; S.maskBitmap = null; api.mask = null;
    $("download").hidden = true; delete view.dataset.maskSha256;
    $("file-info").textContent = `${file.name} · ${(file.size / 1048576).toFixed(2)} MB`;
    setState("loading", "Loading preview…");
    try {
      let bmp = null;
      if ((await exifOrientation(file)) <= 1) {
        try {
          bmp = await createImageBitmap(file);
          S.origW = bmp.width; S.origH = bmp.height;
        } catch (e) { bmp = null; }
      }
      if (!bmp) {  // TIFF, DICOM, NIfTI, 16-bit, EXIF-rotated: ask the server for a preview
        const fd = new FormData(); fd.append("file", file);
        const r = await fetch("/v1/preview", { method: "POST", body: fd, headers: headers() });
        if (!r.ok) throw new Error(await errorText(r));
        S.origW = +r.headers.get("X-Image-Width"); S.origH = +r.headers.get("X-Image-Height");
        bmp = await createImageBitmap(await r.blob());
      }
      fitCanvas();
      // keep only a downscaled preview in memory
      const pv = document.createElement("canvas"); pv.width = view.width; pv.height = view.height;
      const pctx = pv.getContext("2d"); pctx.imageSmoothingQuality = "high";
      pctx.drawImage(bmp, 0, 0, pv.width, pv.height);
      if (bmp.close) bmp.close();
      S.preview = pv;
      view.dataset.imageWidth = S.origW; view.dataset.imageHeight = S.origH;
      $("run").disabled = false;
      render();
      setState("ready", `${S.origW}×${S.origH} px` + (S.model && S.model.box_prompts ? " — draw boxes, then Segment." : " — press Segment."));
      if (!(S.model && S.model.box_prompts)) await segment();
    } catch (e) {
      setState("error", "Cannot open image: " + e.message, true);
    }
  }

  async function sha256Hex(buf) {
    if (!(window.crypto && crypto.subtle)) return "";
    const d = await crypto.subtle.digest("SHA-256", buf);
    return Array.from(new Uint8Array(d)).map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function segment() {
    if (!S.file || !S.model) return;
    $("run").disabled = true;
    setState("segmenting", "Segmenting…");
    const t0 = performance.now();
    try {
      const fd = new FormData();
      fd.append("file", S.file);
      if (S.boxes.length) fd.append("boxes", JSON.stringify(S.boxes.map((b) => b.map((v) => Math.round(v)))));
      const q = `?format=png&model=${encodeURIComponent(S.model.name)}`;
      const r = await fetch("/v1/segment" + q, { method: "POST", body: fd, headers: headers() });
      if (!r.ok) throw new Error(await errorText(r));
      const blob = await r.blob();
      const buf = await blob.arrayBuffer();
      S.maskBlob = blob;
      S.maskBitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
      const classes = buildOverlay();
      renderLegend(classes);
      if (S.downloadUrl) URL.revokeObjectURL(S.downloadUrl);
      S.downloadUrl = URL.createObjectURL(blob);
      const a = $("download"); a.href = S.downloadUrl; a.hidden = false;
      a.download = (S.file.name.replace(/\.[^.]+(\.gz)?$/, "") || "image") + "_mask.png";
      const sha = await sha256Hex(buf);
      api.mask = { width: S.maskBitmap.width, height: S.maskBitmap.height, sha256: sha, bytes: buf.byteLength };
      view.dataset.maskSha256 = sha;
      view.dataset.maskWidth = S.maskBitmap.width; view.dataset.maskHeight = S.maskBitmap.height;
      render();
      const fg = classes.slice(1).reduce((s, c) => s + c.fraction, 0);
      setState("done", `Mask ${S.maskBitmap.width}×${S.maskBitmap.height} in ${((performance.now() - t0) / 1000).toFixed(2)} s — foreground ${(100 * fg).toFixed(1)} % (preview shown at ${Math.round(100 * S.scale)} %).`);
    } catch (e) {
      setState("error", "Segmentation failed: " + e.message, true);
    } finally {
      $("run").disabled = false;
    }
  }

  // Full-size mask values (the PNG's grey values), for checks and for the test.
  api.readMask = function () {
    if (!S.maskBitmap) return null;
    const c = document.createElement("canvas"); c.width = S.maskBitmap.width; c.height = S.maskBitmap.height;
    const cx = c.getContext("2d", { willReadFrequently: true }); cx.drawImage(S.maskBitmap, 0, 0);
    const d = cx.getImageData(0, 0, c.width, c.height).data;
    const out = new Uint8Array(c.width * c.height);
    for (let i = 0; i < out.length; i++) out[i] = d[4 * i];
    return out;
  };

  function buildOverlay() {
    // class colours at preview size (nearest neighbour) + class fractions at full size
    const m = S.model, scale = m.mask_png_scale || 1;
    const ov = document.createElement("canvas"); ov.width = view.width; ov.height = view.height;
    const ocx = ov.getContext("2d", { willReadFrequently: true });
    ocx.imageSmoothingEnabled = false;
    ocx.drawImage(S.maskBitmap, 0, 0, ov.width, ov.height);
    const img = ocx.getImageData(0, 0, ov.width, ov.height), d = img.data;
    const counts = new Array(m.class_names.length).fill(0);
    for (let i = 0; i < d.length; i += 4) {
      const k = Math.min(Math.round(d[i] / scale), m.class_names.length - 1);
      counts[k]++;
      if (k === 0) { d[i + 3] = 0; continue; }
      const c = m.colors[k] || [255, 0, 0];
      d[i] = c[0]; d[i + 1] = c[1]; d[i + 2] = c[2]; d[i + 3] = 255;
    }
    ocx.putImageData(img, 0, 0);
    S.overlay = ov;
    const n = ov.width * ov.height;
    return counts.map((c) => ({ fraction: c / n }));
  }

  function render() {
    ctx.clearRect(0, 0, view.width, view.height);
    if (!S.preview) { ctx.fillStyle = "#2d3742"; ctx.fillRect(0, 0, view.width, view.height); return; }
    ctx.globalAlpha = 1; ctx.drawImage(S.preview, 0, 0);
    if (S.overlay) {
      ctx.globalAlpha = $("opacity").value / 100;
      ctx.drawImage(S.overlay, 0, 0);
      ctx.globalAlpha = 1;
    }
    ctx.lineWidth = 2; ctx.strokeStyle = "#ffd400"; ctx.setLineDash([6, 4]);
    const all = S.drag ? S.boxes.concat([S.drag]) : S.boxes;
    for (const b of all) ctx.strokeRect(b[0] * S.sx, b[1] * S.sy, (b[2] - b[0]) * S.sx, (b[3] - b[1]) * S.sy);
    ctx.setLineDash([]);
  }

  // Pointer position -> image pixels. The canvas may be shown smaller than its pixel size (CSS
  // max-width) and holds the image at S.sx x S.sy, so: CSS px -> canvas px -> image px.
  function toImage(ev) {
    const r = view.getBoundingClientRect();
    const x = (ev.clientX - r.left) * (view.width / r.width) / S.sx;   // #view has no border/padding
    const y = (ev.clientY - r.top) * (view.height / r.height) / S.sy;
    return [Math.max(0, Math.min(S.origW, x)), Math.max(0, Math.min(S.origH, y))];
  }

  function dragTo(ev) {
    const p = toImage(ev), s = S.dragStart;
    S.drag = [Math.min(s[0], p[0]), Math.min(s[1], p[1]), Math.max(s[0], p[0]), Math.max(s[1], p[1])];
  }

  // Pointer events: mouse, pen and touch alike; the pointer is captured so a drag that leaves
  // the canvas still ends (clamped to the image edge).
  view.addEventListener("pointerdown", (ev) => {
    if (!S.preview || !S.model || !S.model.box_prompts || ev.button !== 0 || S.drag) return;
    ev.preventDefault();
    const p = toImage(ev); S.drag = [p[0], p[1], p[0], p[1]]; S.dragStart = p; S.dragPointer = ev.pointerId;
    try { view.setPointerCapture(ev.pointerId); } catch (e) { /* synthetic events */ }
  });
  window.addEventListener("pointermove", (ev) => {
    if (!S.drag || ev.pointerId !== S.dragPointer) return;
    dragTo(ev); render();
  });
  function endDrag(ev, keep) {
    if (!S.drag || ev.pointerId !== S.dragPointer) return;
    if (keep) dragTo(ev);
    const b = S.drag; S.drag = null; S.dragPointer = null;
    // at least 2 image pixels a side, so the box stays non-empty once rounded to whole pixels
    if (keep && b[2] - b[0] >= 2 && b[3] - b[1] >= 2) S.boxes.push(b);
    render();
  }
  window.addEventListener("pointerup", (ev) => endDrag(ev, true));
  window.addEventListener("pointercancel", (ev) => endDrag(ev, false));

  $("clear-boxes").addEventListener("click", () => { S.boxes = []; render(); });
  $("run").addEventListener("click", segment);
  $("model").addEventListener("change", () => { selectModel(); S.overlay = null; render(); });
  $("opacity").addEventListener("input", () => { $("opacity-value").textContent = $("opacity").value + "%"; render(); });
  $("file").addEventListener("change", (ev) => openFile(ev.target.files[0]));
  $("token").addEventListener("change", loadModels);
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (ev) => { if (ev.dataTransfer.files.length) openFile(ev.dataTransfer.files[0]); });
  window.addEventListener("dragover", (ev) => ev.preventDefault());
  window.addEventListener("drop", (ev) => { ev.preventDefault(); if (ev.dataTransfer.files.length) openFile(ev.dataTransfer.files[0]); });

  render();
  loadModels().catch((e) => setState("error", "Cannot reach the server: " + e.message, true));
})();
