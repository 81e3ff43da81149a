// The board's page: sign in, recognise, teach, rename and forget classes, the board camera and the board's status.
// Plain JavaScript against the service's JSON API (docs/service.md); no build step, nothing from elsewhere.
"use strict";

(() => {
  const MAX_SIDE = 1024; // a photo's longer side once downsized: a phone's 4-12 MB photo becomes ~100-300 KB
  const JPEG_QUALITY = 0.85;
  const KEEP_BYTES = 512 * 1024; // a PNG or JPEG file already this small and within MAX_SIDE is sent as it is
  const PREVIEW_MS = 1000; // the board camera's preview: a still this often
  const LIVE_MS = 1500; // live recognition: a frame classified this often
  const STATUS_MS = 30000;

  const $ = (id) => document.getElementById(id);
  const state = { health: null, classes: [], camera: null, pending: [], live: false, previewing: false, stream: null };
  let statusTimer = null;

  // -- the API -----------------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // Every request: same-origin, the session cookie sent by the browser (never the token), JSON in and out.
  async function api(method, path, body) {
    const options = { method, headers: {}, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (e) {
      throw new ApiError(0, "The board did not answer. Is it on, and is this device on its network?");
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const message = (data && data.error) || `The board answered HTTP ${response.status}.`;
      if (response.status === 401 && path !== "/session") {
        showLogin("Your session has ended (the board may have restarted): enter the token again.");
      }
      throw new ApiError(response.status, message);
    }
    return data;
  }

  function say(id, text, kind) {
    const node = $(id);
    node.textContent = text || "";
    node.classList.toggle("error", kind === "error");
    node.classList.toggle("ok", kind === "ok");
  }

  // -- photos: downsized in the browser before upload ---------------------------------------------------------
  function readAsDataUrl(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
  }

  function loadImage(blob) {
    return new Promise((resolve, reject) => {
      const url = URL.createObjectURL(blob);
      const image = new Image();
      image.onload = () => resolve({ source: image, width: image.naturalWidth, height: image.naturalHeight,
        done: () => URL.revokeObjectURL(url) });
      image.onerror = () => { URL.revokeObjectURL(url); reject(new Error("unreadable")); };
      image.src = url;
    });
  }

  async function decode(blob) {
    if (window.createImageBitmap) {
      try {
        const bitmap = await createImageBitmap(blob, { imageOrientation: "from-image" });
        return { source: bitmap, width: bitmap.width, height: bitmap.height, done: () => bitmap.close() };
      } catch (e) {
        // some browsers refuse the options, or a format: the <img> route below
      }
    }
    return loadImage(blob);
  }

  function maxPixels() {
    const limits = state.health && state.health.limits;
    return limits ? limits.max_pixels : 1000000;
  }

  // A photo as the service takes it: {data: a data: URL, bytes, pixels, name}. Small PNG/JPEG files go as they are;
  // anything larger is drawn on a canvas at most MAX_SIDE a side (and within the service's pixels) and sent as JPEG.
  async function prepare(blob, name) {
    let image;
    try {
      image = await decode(blob);
    } catch (e) {
      throw new Error(`${name} is not an image this browser can read.`);
    }
    try {
      const { width, height } = image;
      const scale = Math.min(1, MAX_SIDE / Math.max(width, height), Math.sqrt(maxPixels() / (width * height)));
      const plain = blob.type === "image/jpeg" || blob.type === "image/png";
      if (plain && scale === 1 && blob.size <= KEEP_BYTES) {
        return { data: await readAsDataUrl(blob), bytes: blob.size, pixels: width * height, name };
      }
      const w = Math.max(1, Math.floor(width * scale));
      const h = Math.max(1, Math.floor(height * scale));
      const canvas = document.createElement("canvas");
      canvas.width = w;
      canvas.height = h;
      const context = canvas.getContext("2d");
      context.fillStyle = "#fff"; // a transparent PNG's background, as on paper
      context.fillRect(0, 0, w, h);
      context.imageSmoothingQuality = "high";
      context.drawImage(image.source, 0, 0, w, h);
      const jpeg = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
      if (!jpeg) throw new Error(`${name} could not be converted to JPEG in this browser.`);
      return { data: await readAsDataUrl(jpeg), bytes: jpeg.size, pixels: w * h, name };
    } finally {
      image.done();
    }
  }

  // Photos grouped into requests within the service's limits (images, body bytes, pixels per request).
  function batches(photos) {
    const limits = (state.health && state.health.limits) || { max_images: 32, max_request_bytes: 4194304, max_pixels: 1000000 };
    const groups = [];
    let group = [], bytes = 0, pixels = 0;
    for (const photo of photos) {
      const size = photo.data.length + 4;
      if (group.length && (group.length >= limits.max_images || bytes + size > 0.9 * limits.max_request_bytes - 1024 ||
          pixels + photo.pixels > limits.max_pixels)) {
        groups.push(group);
        group = [];
        bytes = pixels = 0;
      }
      group.push(photo);
      bytes += size;
      pixels += photo.pixels;
    }
    if (group.length) groups.push(group);
    return groups;
  }

  function kilobytes(n) {
    return n < 1024 * 1024 ? `${Math.max(1, Math.round(n / 1024))} KB` : `${(n / 1048576).toFixed(1)} MB`;
  }

  function mebibytes(n) {
    return `${(n / 1048576).toFixed(1)} MiB`;
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "not yet";
    const s = Math.max(0, Date.now() / 1000 - seconds);
    if (s < 60) return "just now";
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    if (s < 14 * 86400) return `${Math.round(s / 86400)} days ago`;
    return new Date(seconds * 1000).toLocaleDateString();
  }

  function duration(seconds) {
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} days ${Math.floor((s % 86400) / 3600)} h`;
  }

  // A calibrated probability is never certainty: 0.9996 reads "over 99 %", not "100 %".
  function percent(p) {
    if (p >= 0.995) return "over 99 %";
    if (p < 0.005) return "under 1 %";
    return `${Math.round(100 * p)} %`;
  }

  // -- sign-in ------------------------------------------------------------------------------------------------
  function showLogin(message) {
    stopTimers();
    $("app").hidden = true;
    $("login").hidden = false;
    $("logout").hidden = true;
    $("board-line").textContent = "Sign in to use this board.";
    say("login-message", message, "error");
    $("token").focus();
  }

  async function login(event) {
    event.preventDefault();
    const button = $("login-submit");
    button.disabled = true;
    say("login-message", "Checking…");
    try {
      await api("POST", "/session", { token: $("token").value });
      $("token").value = "";
      say("login-message", "");
      await openApp(true);
    } catch (e) {
      say("login-message", e.status === 401 ? "That token is wrong. Check it and try again." : e.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  async function logout() {
    try {
      await api("POST", "/session/logout", {});
    } catch (e) {
      // signed out either way: the cookie is gone or was already invalid
    }
    showLogin("");
  }

  async function start() {
    let session;
    try {
      session = await api("GET", "/session");
    } catch (e) {
      $("board-line").textContent = e.message;
      return;
    }
    if (session.token_required && !session.signed_in) {
      showLogin("");
      return;
    }
    await openApp(session.token_required);
  }

  async function openApp(signedIn) {
    $("login").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = !signedIn;
    await Promise.all([refreshStatus(), refreshClasses(), refreshCamera()]);
    stopTimers();
    statusTimer = setInterval(() => { if (document.visibilityState === "visible") refreshStatus(); }, STATUS_MS);
  }

  function stopTimers() {
    if (statusTimer) clearInterval(statusTimer);
    statusTimer = null;
    state.live = false;
    state.previewing = false;
  }

  // -- status -------------------------------------------------------------------------------------------------
  async function refreshStatus() {
    let health;
    try {
      health = await api("GET", "/health");
    } catch (e) {
      $("board-line").textContent = e.message;
      return;
    }
    if (!health.limits) return; // only the liveness answer: not signed in
    state.health = health;
    const bundle = health.bundle || {};
    const sha = (bundle.model_sha256 || health.model_sha256 || "").slice(0, 12);
    $("board-line").textContent = `${bundle.name || "model"} · ${health.classes} ${health.classes === 1 ? "class" : "classes"}`;
    $("status-bundle").textContent = `${bundle.name || "a bundle"}${bundle.dataset ? ` (trained on ${bundle.dataset})` : ""}, sha256 ${sha}…`;
    $("status-classes").textContent = `${health.classes} ${health.classes === 1 ? "class" : "classes"}`;
    const memory = health.memory || {};
    const report = memory.adapter;
    const meter = $("status-meter");
    if (report && report.budget_bytes) {
      $("status-memory").textContent = `${mebibytes(report.used_bytes)} of ${mebibytes(report.budget_bytes)} ` +
        (memory.budget_bytes ? `(the ${mebibytes(memory.budget_bytes)} budget less one request's body)` : "");
      meter.max = report.budget_bytes;
      meter.value = Math.min(report.used_bytes, report.budget_bytes);
      meter.high = 0.9 * report.budget_bytes;
      meter.hidden = false;
    } else {
      $("status-memory").textContent = report ? `${mebibytes(report.used_bytes)} planned; no memory budget set` : "no memory budget set";
      meter.hidden = true;
    }
    $("status-fit").textContent = report && report.classes_that_fit !== null && report.classes_that_fit !== undefined
      ? `${report.classes_that_fit.toLocaleString()} more classes` : "no limit set (no memory budget)";
    $("status-uptime").textContent = duration(health.uptime_seconds);
    $("status-camera").textContent = health.camera || "none";
    $("status-state").textContent = health.state || "nowhere: what is taught is lost when the service stops";
  }

  // -- classes ------------------------------------------------------------------------------------------------
  async function refreshClasses() {
    let answer;
    try {
      answer = await api("GET", "/labels");
    } catch (e) {
      say("classes-message", e.message, "error");
      return;
    }
    state.classes = answer.labels;
    renderClasses();
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function button(text, className, onClick) {
    const node = element("button", className, text);
    node.type = "button";
    node.addEventListener("click", onClick);
    return node;
  }

  function renderClasses() {
    const list = $("class-list");
    list.replaceChildren();
    const labels = $("known-labels");
    labels.replaceChildren();
    $("class-count").textContent = state.classes.length ? `(${state.classes.length})` : "";
    $("classes-empty").hidden = state.classes.length > 0;
    for (const info of state.classes) {
      labels.append(Object.assign(document.createElement("option"), { value: info.label }));
      list.append(classItem(info));
    }
  }

  function classItem(info) {
    const item = element("li", "class-item");
    item.dataset.label = info.label;
    let thumb;
    if (info.has_thumbnail) {
      thumb = element("img", "thumb");
      thumb.alt = "";
      thumb.loading = "lazy";
      thumb.src = `/labels/${encodeURIComponent(info.label)}/thumbnail.jpg?v=${info.enrolled || 0}`;
    } else {
      thumb = element("span", "thumb placeholder", Array.from(info.label)[0].toUpperCase());
    }
    const text = element("div", "class-info");
    text.append(element("span", "class-label", info.label));
    const used = info.last_used === undefined ? "" : ` · used ${ago(info.last_used)}`;
    text.append(element("span", "class-meta muted", `${info.shots} ${info.shots === 1 ? "shot" : "shots"}${used}`));
    const actions = element("div", "class-actions");
    const rename = element("form", "rename-form");
    rename.hidden = true;
    const field = element("input");
    field.value = info.label;
    field.maxLength = 256;
    field.required = true;
    field.setAttribute("aria-label", `New name for ${info.label}`);
    const save = element("button", "primary", "Save");
    save.type = "submit";
    rename.append(field, save, button("Cancel", "quiet", () => { rename.hidden = true; actions.hidden = false; }));
    rename.addEventListener("submit", (event) => { event.preventDefault(); renameClass(info.label, field.value.trim()); });
    const confirm = element("div", "forget-confirm");
    confirm.hidden = true;
    confirm.append(element("span", "", `Forget “${info.label}” and its ${info.shots} ${info.shots === 1 ? "shot" : "shots"}?`),
      button("Yes, forget", "danger confirm-forget", () => forgetClass(info.label)),
      button("Keep", "quiet", () => { confirm.hidden = true; actions.hidden = false; }));
    actions.append(
      button("Rename", "rename", () => { actions.hidden = true; rename.hidden = false; field.focus(); field.select(); }),
      button("Forget", "danger forget", () => { actions.hidden = true; confirm.hidden = false; }));
    item.append(thumb, text, actions, rename, confirm);
    return item;
  }

  async function renameClass(label, to) {
    try {
      await api("POST", "/rename", { label, to });
      say("classes-message", `Renamed “${label}” to “${to}”.`, "ok");
    } catch (e) {
      say("classes-message", e.message, "error");
      return;
    }
    await Promise.all([refreshClasses(), refreshStatus()]);
  }

  async function forgetClass(label) {
    try {
      await api("POST", "/forget", { label });
      say("classes-message", `Forgot “${label}”.`, "ok");
    } catch (e) {
      say("classes-message", e.message, "error");
      return;
    }
    await Promise.all([refreshClasses(), refreshStatus()]);
  }

  // -- teach --------------------------------------------------------------------------------------------------
  function addPending(files) {
    for (const file of files) {
      state.pending.push({ blob: file, name: file.name || `photo ${state.pending.length + 1}` });
    }
    renderPending();
  }

  function renderPending() {
    const list = $("teach-pending");
    for (const img of list.querySelectorAll("img")) URL.revokeObjectURL(img.src);
    list.replaceChildren();
    state.pending.forEach((photo, i) => {
      const item = element("li", "pending-item");
      const img = element("img");
      img.alt = photo.name;
      img.src = URL.createObjectURL(photo.blob);
      item.append(img, button("✕", "quiet remove", () => { state.pending.splice(i, 1); renderPending(); }));
      item.lastChild.setAttribute("aria-label", `Remove ${photo.name}`);
      list.append(item);
    });
    $("teach-submit").textContent = state.pending.length
      ? `Teach ${state.pending.length} ${state.pending.length === 1 ? "photo" : "photos"}` : "Teach";
  }

  async function teach(event) {
    event.preventDefault();
    const label = $("teach-label").value.trim();
    if (!label) {
      say("teach-message", "Give the class a name first.", "error");
      return;
    }
    if (!state.pending.length) {
      say("teach-message", "Add at least one photo (take one, or choose files).", "error");
      return;
    }
    const submit = $("teach-submit");
    submit.disabled = true;
    let added = 0, sent = 0, shots = null;
    try {
      say("teach-message", `Preparing ${state.pending.length} ${state.pending.length === 1 ? "photo" : "photos"}…`);
      const photos = [];
      for (const photo of state.pending) photos.push(await prepare(photo.blob, photo.name));
      const groups = batches(photos);
      for (const [i, group] of groups.entries()) {
        if (groups.length > 1) say("teach-message", `Teaching “${label}”: part ${i + 1} of ${groups.length}…`);
        const answer = await api("POST", "/enroll", { label, images: group.map((p) => p.data) });
        added += answer.added;
        shots = answer.shots;
        sent += group.reduce((n, p) => n + p.bytes, 0);
        state.pending.splice(0, group.length); // what was taught leaves the list; a refusal leaves the rest
      }
      say("teach-message", `Taught “${label}”: ${shots} ${shots === 1 ? "shot" : "shots"} now ` +
        `(${added} added, ${kilobytes(sent)} sent).`, "ok");
    } catch (e) {
      const before = added ? ` ${added} ${added === 1 ? "photo was" : "photos were"} taught before it.` : "";
      say("teach-message", `${e.message}${before}`, "error");
    } finally {
      submit.disabled = false;
      renderPending();
    }
    await Promise.all([refreshClasses(), refreshStatus()]);
  }

  // -- recognise ----------------------------------------------------------------------------------------------
  async function recognise(blob, name) {
    say("recognise-message", "Looking…");
    const shown = $("recognise-photo");
    if (shown.src.startsWith("blob:")) URL.revokeObjectURL(shown.src);
    shown.src = URL.createObjectURL(blob);
    try {
      const photo = await prepare(blob, name);
      const answer = await api("POST", "/classify", { images: [photo.data] });
      showPrediction(answer.predictions[0]);
      say("recognise-message", "");
    } catch (e) {
      $("recognise-result").hidden = true;
      say("recognise-message", e.status === 409 ? "Nothing is taught yet: teach a class first." : e.message, "error");
    }
    refreshClasses(); // its last-used time changed
  }

  // The answer in words: the label or "unknown"; the nearest class; the calibrated probability that the image is of
  // a taught class at all ("how sure it knows this"). The softmax only says which taught class is closest, so it is
  // kept in the details, apart, where it cannot read as certainty about an unknown image.
  function showPrediction(p) {
    $("recognise-result").hidden = false;
    $("recognise-result").classList.toggle("unknown", p.label === null);
    $("recognise-answer").textContent = p.label === null ? "Unknown: not one of the taught classes" : p.label;
    $("recognise-nearest").textContent = `Nearest class: ${p.nearest}`;
    const sure = typeof p.probability === "number" ? percent(p.probability) : "not calibrated for this model";
    $("recognise-sure").textContent = `How sure it knows this: ${sure}`;
    const softmax = typeof p.softmax === "number" ? p.softmax : p.score;
    $("recognise-details").textContent = `Distance to “${p.nearest}”: ${p.distance.toFixed(3)}. Among the taught classes ` +
      `only, “${p.nearest}” is the closest with a softmax of ${softmax.toFixed(3)}: that says which taught class, ` +
      "not whether the image is one of them.";
  }

  function pickedFile(input, use) {
    input.addEventListener("change", () => {
      const files = Array.from(input.files || []);
      input.value = ""; // the same file can be chosen again
      if (files.length) use(files);
    });
  }

  // -- live capture on this device (a bonus: browsers allow it only on https or localhost) ---------------------
  async function liveStart() {
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
    } catch (e) {
      say("teach-message", `The camera could not be opened here (${e.name || e}). Take photos instead.`, "error");
      return;
    }
    const video = $("live-video");
    video.srcObject = state.stream;
    await video.play().catch(() => {});
    $("live").hidden = false;
  }

  function liveStop() {
    if (state.stream) state.stream.getTracks().forEach((track) => track.stop());
    state.stream = null;
    $("live-video").srcObject = null;
    $("live").hidden = true;
  }

  function liveFrame() {
    const video = $("live-video");
    if (!video.videoWidth) return Promise.resolve(null);
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
  }

  // -- the board's camera -------------------------------------------------------------------------------------
  async function refreshCamera() {
    try {
      state.camera = await api("GET", "/camera");
    } catch (e) {
      state.camera = null; // 404: no camera on this board
    }
    $("camera").hidden = !state.camera;
    if (!state.camera) return;
    $("camera-name").textContent = `Camera: ${state.camera.camera}`;
    $("camera-frames").value = state.camera.teach.frames;
    $("camera-frames").max = state.camera.teach.max_frames;
    $("camera-seconds").value = state.camera.teach.seconds;
    $("camera-seconds").max = state.camera.teach.max_seconds;
    if (!state.previewing) {
      state.previewing = true;
      nextPreview();
    }
  }

  // Periodic stills: the next one is asked for once the last has arrived, so a slow link never piles requests up.
  function nextPreview() {
    if (!state.previewing) return;
    if (document.visibilityState !== "visible" || $("app").hidden) {
      setTimeout(nextPreview, PREVIEW_MS);
      return;
    }
    const preview = $("camera-preview");
    const again = () => setTimeout(nextPreview, PREVIEW_MS);
    preview.onload = again;
    preview.onerror = again;
    preview.src = `${state.camera.preview}?t=${Date.now()}`;
  }

  async function cameraTeach(event) {
    event.preventDefault();
    const label = $("camera-label").value.trim();
    const frames = Number($("camera-frames").value), seconds = Number($("camera-seconds").value);
    const submit = $("camera-teach");
    submit.disabled = true;
    say("camera-message", `Hold still: ${frames} ${frames === 1 ? "frame" : "frames"} over ${seconds} s…`);
    try {
      const answer = await api("POST", "/camera/teach", { label, frames, seconds });
      say("camera-message", `Taught “${answer.label}” from the board's camera: ${answer.shots} shots now ` +
        `(${answer.added} added).`, "ok");
    } catch (e) {
      say("camera-message", e.message, "error");
    } finally {
      submit.disabled = false;
    }
    await Promise.all([refreshClasses(), refreshStatus()]);
  }

  async function cameraLive() {
    state.live = !state.live;
    const toggle = $("camera-live");
    toggle.textContent = state.live ? "Stop live recognition" : "Start live recognition";
    toggle.setAttribute("aria-pressed", String(state.live));
    while (state.live) {
      try {
        const answer = await api("POST", "/camera/classify", {});
        const p = answer.predictions[0];
        const sure = typeof p.probability === "number" ? ` (${percent(p.probability)} sure it knows this)` : "";
        $("camera-result").textContent = p.label === null ? `Unknown (nearest: ${p.nearest})${sure}` : `${p.label}${sure}`;
        say("camera-message", "");
      } catch (e) {
        say("camera-message", e.status === 409 ? "Nothing is taught yet: teach a class first." : e.message, "error");
        state.live = false;
        toggle.textContent = "Start live recognition";
        toggle.setAttribute("aria-pressed", "false");
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, LIVE_MS));
    }
  }

  // -- wiring -------------------------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("teach-form").addEventListener("submit", teach);
    pickedFile($("teach-files"), addPending);
    pickedFile($("teach-pick"), addPending);
    pickedFile($("recognise-file"), (files) => recognise(files[0], files[0].name));
    pickedFile($("recognise-pick"), (files) => recognise(files[0], files[0].name));
    $("status-refresh").addEventListener("click", refreshStatus);
    $("camera-teach-form").addEventListener("submit", cameraTeach);
    $("camera-live").addEventListener("click", cameraLive);
    if (window.isSecureContext && navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
      $("live-start").hidden = false;
      $("live-start").addEventListener("click", liveStart);
      $("live-stop").addEventListener("click", liveStop);
      $("live-snap").addEventListener("click", async () => {
        const frame = await liveFrame();
        if (frame) addPending([new File([frame], `frame ${state.pending.length + 1}.jpg`, { type: "image/jpeg" })]);
      });
      $("live-recognise").addEventListener("click", async () => {
        const frame = await liveFrame();
        if (frame) recognise(frame, "a camera frame");
      });
    }
    start();
  });
})();
