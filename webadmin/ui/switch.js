// The KVM switch: every running VM's screen in one grid, one keyboard and
// mouse. The panel streams each display tile shrunk to its size (a few
// frames a second, only what changed) on one WebSocket, and takes the
// page's keys on it for the VM with the focus, or for the marked VMs when
// broadcasting. The focused display tile is a full-size noVNC view (its
// mouse goes to the VM); serial-only VMs are terminals. An idle page
// receives nothing: the list of VMs comes on the same socket when it
// changes. Hotkeys move the
// focus and never reach a guest: the modifiers they start with are held
// back until it is clear the key is not a hotkey.
import RFB from './vendor/novnc/core/rfb.js';
import XtScancode from './vendor/novnc/core/input/xtscancodes.js';

const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const modOf = (code) => (code.startsWith('Control') ? 'ctrl' : code.startsWith('Alt') ? 'alt' : code.startsWith('Shift') ? 'shift' : null);
const DOUBLE_TAP_CODES = { scrolllock: 'ScrollLock', pause: 'Pause' };
const DOUBLE_TAP_MS = 500;
const COLUMNS = { 1: 1, '2x2': 2, '3x3': 3, '4x4': 4 };

// The XT scancode of a key, in QEMU's numbering (0xE0 keys + 0x80).
function scancodeOf(code) {
  const x = XtScancode[code];
  if (x === undefined) return null;
  return (x >> 8) === 0xe0 ? (x & 0x7f) | 0x80 : x;
}

// What a terminal sends for a key press (serial-only VMs).
const TERMINAL = { Enter: '\r', Backspace: '\x7f', Tab: '\t', Escape: '\x1b', ArrowUp: '\x1b[A', ArrowDown: '\x1b[B', ArrowRight: '\x1b[C', ArrowLeft: '\x1b[D', Home: '\x1b[H', End: '\x1b[F', Delete: '\x1b[3~', PageUp: '\x1b[5~', PageDown: '\x1b[6~' };
function terminalBytes(e) {
  if (e.ctrlKey && !e.altKey && /^[a-z]$/i.test(e.key)) return String.fromCharCode(e.key.toLowerCase().charCodeAt(0) - 96);
  if (TERMINAL[e.key]) return TERMINAL[e.key];
  return e.key.length === 1 && !e.ctrlKey && !e.altKey && !e.metaKey ? e.key : '';
}

window.kvmosSwitch = function open(root, ctx) {
  let settings = ctx.settings;
  let screens = [];
  const tiles = new Map(); // id -> tile
  let focusId = null;
  let fullId = null;
  let broadcast = false;
  const marked = new Set();
  const stats = { bytes: 0, patches: 0 };
  window.kvmosSwitchStats = stats;
  let closed = false;

  root.innerHTML = `
    <div class="switch-bar">
      <h1>Switch</h1>
      <label>Layout <select id="sw-layout">${['auto', '1', '2x2', '3x3', '4x4'].map((l) => `<option value="${l}">${l === 'auto' ? 'automatic' : l === '1' ? 'one at a time' : l}</option>`).join('')}</select></label>
      <label class="check"><input type="checkbox" id="sw-roaming"> Mouse roaming</label>
      <button class="secondary small" id="sw-broadcast" aria-pressed="false">Broadcast to marked</button>
      <span class="muted" id="sw-help"></span>
    </div>
    <div class="notice warn" id="sw-broadcasting" hidden></div>
    <div id="switch-grid" class="switch-grid"></div>
    <p class="muted" id="sw-empty" hidden>No VM is running. Start one from the dashboard and it appears here.</p>`;
  const grid = root.querySelector('#switch-grid');
  const layoutSel = root.querySelector('#sw-layout');
  const roamingBox = root.querySelector('#sw-roaming');
  const bcButton = root.querySelector('#sw-broadcast');
  layoutSel.value = settings.layout;
  roamingBox.checked = settings.roaming;
  const mods = settings.modifiers.split('+');
  const prefix = mods.map((m) => m[0].toUpperCase() + m.slice(1)).join('+');
  root.querySelector('#sw-help').textContent = `${prefix}+1…9 or ←/→ to switch, ${settings.double_tap !== 'off' ? `${DOUBLE_TAP_CODES[settings.double_tap]} twice for the next, ` : ''}${prefix}+Enter full screen, ${prefix}+0 the grid, ${prefix}+B broadcast off`;

  const save = () => ctx.api('PUT', '/api/v1/switch/settings', settings).catch((e) => ctx.toast(e.message, true));
  layoutSel.onchange = () => { settings = { ...settings, layout: layoutSel.value }; save(); arrange(); };
  roamingBox.onchange = () => { settings = { ...settings, roaming: roamingBox.checked }; save(); };
  bcButton.onclick = () => setBroadcast(!broadcast);

  // ---- the WebSocket: tiles in, keys out ----
  let ws = null;
  const connect = () => {
    ws = new WebSocket(`wss://${location.host}/api/v1/switch`);
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => watch();
    ws.onmessage = (ev) => (typeof ev.data === 'string' ? onText(JSON.parse(ev.data)) : onPatch(ev.data));
    ws.onclose = () => { if (!closed) setTimeout(connect, 1000); };
  };
  const send = (m) => { if (ws && ws.readyState === 1) ws.send(JSON.stringify(m)); };
  function onText(m) {
    if (m.error) ctx.toast(m.error, true);
    if (m.tile_ended) { const t = tiles.get(m.tile_ended.id); if (t) t.el.dataset.stream = 'ended'; }
    if (m.screens) show(m.screens);
  }
  async function onPatch(buf) {
    stats.bytes += buf.byteLength; stats.patches += 1;
    const d = new DataView(buf);
    const idLen = d.getUint8(1);
    const id = new TextDecoder().decode(new Uint8Array(buf, 2, idLen));
    const at = 2 + idLen;
    const [w, h, x, y] = [0, 2, 4, 6].map((o) => d.getUint16(at + o));
    const t = tiles.get(id);
    if (!t || !t.canvas) return;
    const bmp = await createImageBitmap(new Blob([new Uint8Array(buf, at + 8)], { type: 'image/png' }));
    if (t.canvas.width !== w || t.canvas.height !== h) { t.canvas.width = w; t.canvas.height = h; }
    t.canvas.getContext('2d').drawImage(bmp, x, y);
    t.el.dataset.stream = 'live';
    t.frames = (t.frames || 0) + 1;
    t.el.dataset.frames = t.frames;
  }
  // Which tiles the panel streams, at their size on the page.
  function watch() {
    const list = [];
    for (const [id, t] of tiles) {
      if (t.kind !== 'display') continue;
      const r = t.body.getBoundingClientRect();
      const visible = r.width > 0 && r.height > 0;
      list.push({ id, width: Math.round(r.width * devicePixelRatio) || 1, height: Math.round(r.height * devicePixelRatio) || 1, frames: visible && id !== focusId });
    }
    send({ watch: { tiles: list } });
  }

  // ---- tiles ----
  function makeTile(s) {
    const el = document.createElement('div');
    el.className = 'tile';
    el.dataset.vmId = s.id;
    el.dataset.tileName = s.name;
    el.innerHTML = `
      <div class="tile-head">
        <span class="tile-index"></span><b class="tile-name">${esc(s.name)}</b>
        <span class="badge tile-state"></span>
        <span class="tile-kbd" title="keyboard and mouse">⌨ focus</span>
        <span class="tile-tools">
          <label class="check" title="Mark for broadcast"><input type="checkbox" class="tile-mark"> mark</label>
          <button class="secondary small" data-do="full" title="Full screen (hotkey: ${prefix}+Enter)">Full</button>
          <button class="secondary small" data-do="shutdown">Shut down</button>
          <button class="danger small" data-do="force-off">Force off</button>
        </span>
      </div>
      <div class="tile-body"></div>`;
    const body = el.querySelector('.tile-body');
    const t = { id: s.id, name: s.name, kind: s.kind, el, body, canvas: null, rfb: null, term: null, console: null };
    if (s.kind === 'display') {
      t.canvas = document.createElement('canvas');
      t.canvas.className = 'tile-canvas';
      body.appendChild(t.canvas);
    } else {
      openTerminal(t);
    }
    el.querySelector('.tile-mark').onchange = (ev) => { if (ev.target.checked) marked.add(s.id); else marked.delete(s.id); showMarks(); };
    el.querySelectorAll('[data-do]').forEach((b) => {
      b.onclick = async (ev) => {
        ev.stopPropagation();
        const what = b.dataset.do;
        if (what === 'full') return setFull(fullId === s.id ? null : s.id);
        if (what === 'force-off' && !confirm(`Force off ${s.name}? The guest loses unsaved data.`)) return;
        try { await ctx.api('POST', `/api/v1/vms/${s.id}/actions`, { action: what }); ctx.toast(`${s.name}: ${what}`); } catch (e) { ctx.toast(e.message, true); }
        refresh();
      };
    });
    el.addEventListener('mousedown', () => setFocus(s.id));
    el.addEventListener('mouseenter', () => { if (settings.roaming) setFocus(s.id); });
    return t;
  }

  function openTerminal(t) {
    t.term = new window.Terminal({ fontSize: 12, scrollback: 1000, disableStdin: true, theme: { background: '#000000' } });
    t.fit = new window.FitAddon.FitAddon();
    t.term.loadAddon(t.fit);
    t.term.open(t.body);
    t.console = new WebSocket(`wss://${location.host}/api/v1/vms/${encodeURIComponent(t.id)}/console`);
    t.console.binaryType = 'arraybuffer';
    t.console.onmessage = (ev) => { t.term.write(new Uint8Array(ev.data)); t.el.dataset.stream = 'live'; };
  }

  function closeTile(t) {
    if (t.rfb) { t.rfb.disconnect(); t.rfb = null; }
    if (t.console) { t.console.close(); t.console = null; }
    if (t.term) { t.term.dispose(); t.term = null; }
    t.el.remove();
  }

  // The focused display tile: a full-size view whose mouse goes to the VM.
  // Its keys come from this page (noVNC's canvas never takes the focus).
  function openView(t) {
    const box = document.createElement('div');
    box.className = 'tile-view';
    t.body.appendChild(box);
    const rfb = new RFB(box, `wss://${location.host}/api/v1/vms/${encodeURIComponent(t.id)}/screen`);
    rfb.scaleViewport = true;
    rfb.focusOnClick = false;
    rfb.background = '#000';
    rfb.addEventListener('connect', () => { t.el.dataset.view = 'connected'; });
    rfb.addEventListener('disconnect', () => { t.el.dataset.view = 'closed'; });
    t.rfb = rfb;
    t.viewBox = box;
  }
  function closeView(t) {
    if (t.rfb) { t.rfb.disconnect(); t.rfb = null; }
    if (t.viewBox) { t.viewBox.remove(); t.viewBox = null; }
    delete t.el.dataset.view;
  }

  function ordered() { return screens.map((s) => tiles.get(s.id)).filter(Boolean); }

  function setFocus(id) {
    if (id === focusId || !tiles.has(id)) return;
    const old = tiles.get(focusId);
    if (old) { old.el.classList.remove('focused'); closeView(old); }
    focusId = id;
    const t = tiles.get(id);
    t.el.classList.add('focused');
    if (t.kind === 'display') openView(t);
    if (settings.layout === '1' || fullId) { fullId = fullId ? id : null; arrange(); }
    watch();
  }

  function step(delta) {
    const list = ordered();
    if (!list.length) return;
    const at = list.findIndex((t) => t.id === focusId);
    setFocus(list[(at + delta + list.length) % list.length].id);
  }

  function setFull(id) {
    fullId = id;
    if (id) setFocus(id);
    arrange();
  }

  function setBroadcast(on) {
    broadcast = on;
    bcButton.setAttribute('aria-pressed', String(on));
    bcButton.classList.toggle('on', on);
    showMarks();
  }
  function showMarks() {
    for (const t of tiles.values()) {
      t.el.classList.toggle('marked', marked.has(t.id));
      t.el.classList.toggle('broadcasting', broadcast && marked.has(t.id));
    }
    const note = root.querySelector('#sw-broadcasting');
    note.hidden = !broadcast;
    const names = ordered().filter((t) => marked.has(t.id)).map((t) => t.name);
    note.textContent = broadcast ? `Broadcasting keys to ${names.length ? names.join(', ') : 'no VM (mark tiles)'}. ${prefix}+B or the button stops it.` : '';
  }

  // Lays the tiles out: the chosen grid, one at a time, or one full screen.
  function arrange() {
    const list = ordered();
    const one = fullId || (settings.layout === '1' ? focusId : null);
    const cols = one ? 1 : COLUMNS[settings.layout] || Math.max(1, Math.ceil(Math.sqrt(list.length)));
    grid.style.gridTemplateColumns = `repeat(${cols}, minmax(0, 1fr))`;
    grid.classList.toggle('single', !!one);
    // Every row fits in the window: the tiles share its height.
    const rows = one ? 1 : Math.max(1, Math.ceil(list.length / cols));
    const top = grid.getBoundingClientRect().top + window.scrollY;
    const head = 30;
    const gap = 10;
    const h = Math.max(120, (window.innerHeight - top - 16 - gap * (rows - 1)) / rows - head);
    grid.style.setProperty('--tile-h', `${Math.floor(h)}px`);
    list.forEach((t, i) => {
      t.el.querySelector('.tile-index').textContent = i < 9 ? `${i + 1}` : '';
      t.el.hidden = !!one && t.id !== one;
      t.el.classList.toggle('full', t.id === fullId);
      if (t.fit) requestAnimationFrame(() => t.fit && t.fit.fit());
    });
    root.querySelector('#sw-empty').hidden = list.length > 0;
    requestAnimationFrame(watch);
  }

  // The running VMs, pushed by the panel when they change (and fetched
  // after an action): started ones appear, stopped ones leave.
  async function refresh() {
    let list;
    try { list = await ctx.api('GET', '/api/v1/screens'); } catch (e) { return; }
    show(list);
  }
  function show(list) {
    if (closed) return;
    screens = list;
    const ids = new Set(list.map((s) => s.id));
    for (const [id, t] of tiles) {
      if (!ids.has(id)) { closeTile(t); tiles.delete(id); marked.delete(id); if (focusId === id) focusId = null; if (fullId === id) fullId = null; }
    }
    for (const s of list) {
      let t = tiles.get(s.id);
      if (!t) { t = makeTile(s); tiles.set(s.id, t); }
      grid.appendChild(t.el); // keeps the order of the list
      const badge = t.el.querySelector('.tile-state');
      badge.textContent = s.state; badge.className = `badge tile-state ${s.state}`;
    }
    if (!focusId && list.length) setFocus(list[0].id);
    showMarks();
    arrange();
  }

  // ---- the keyboard ----
  const need = settings.modifiers.split('+');
  const doubleTap = DOUBLE_TAP_CODES[settings.double_tap] || null;
  let lastTap = 0;
  const modState = new Map(); // a prefix modifier that is down: 'held' | 'sent' | 'swallowed'
  const swallowed = new Set(); // keys whose press was a hotkey
  const downTo = new Map(); // code -> the VMs its press went to

  const targets = () => (broadcast ? ordered().filter((t) => marked.has(t.id)).map((t) => t.id) : focusId ? [focusId] : []);
  function keyTo(to, code, down, bytes) {
    const scancode = scancodeOf(code);
    if (scancode === null && !bytes) return;
    if (to.length) send({ key: { to, scancode: scancode ?? 0, down, bytes: bytes || '' } });
  }
  function press(code, bytes) { const to = targets(); downTo.set(code, to); keyTo(to, code, true, bytes); }
  function release(code) { const to = downTo.get(code) || targets(); downTo.delete(code); keyTo(to, code, false); }
  function flushHeld() {
    for (const [code, st] of modState) if (st === 'held') { modState.set(code, 'sent'); press(code, ''); }
  }
  function hotkey(code) {
    const n = /^(Digit|Numpad)([1-9])$/.exec(code);
    if (n) { const t = ordered()[Number(n[2]) - 1]; if (t) setFocus(t.id); return true; }
    if (code === 'ArrowLeft') { step(-1); return true; }
    if (code === 'ArrowRight') { step(1); return true; }
    if (code === 'Enter' || code === 'NumpadEnter') { setFull(fullId ? null : focusId); return true; }
    if (code === 'Digit0' || code === 'Numpad0') { setFull(null); return true; }
    if (code === 'KeyB') { setBroadcast(false); return true; }
    return false;
  }
  // Keys typed into a text field or a menu of the page stay there; all
  // others belong to the VMs.
  const ours = (e) => !e.target.closest || !e.target.closest('select, textarea, input:not([type=checkbox])');
  function onKeyDown(e) {
    if (!ours(e)) return;
    e.preventDefault(); e.stopPropagation();
    if (doubleTap && e.code === doubleTap) {
      if (!e.repeat) { const now = performance.now(); if (now - lastTap < DOUBLE_TAP_MS) { step(1); lastTap = 0; } else lastTap = now; }
      swallowed.add(e.code);
      return;
    }
    const m = modOf(e.code);
    if (m && need.includes(m)) { if (!modState.has(e.code)) modState.set(e.code, 'held'); return; }
    const down = new Set([...modState.keys()].map(modOf));
    const extra = (e.shiftKey && !need.includes('shift')) || (e.ctrlKey && !need.includes('ctrl')) || (e.altKey && !need.includes('alt')) || e.metaKey;
    if (need.every((x) => down.has(x)) && !extra && hotkey(e.code)) {
      for (const [code, st] of modState) if (st === 'held') modState.set(code, 'swallowed');
      swallowed.add(e.code);
      return;
    }
    if (e.repeat && downTo.has(e.code)) { keyTo(downTo.get(e.code), e.code, true, terminalBytes(e)); return; }
    flushHeld();
    press(e.code, terminalBytes(e));
  }
  function onKeyUp(e) {
    if (!ours(e)) return;
    e.preventDefault(); e.stopPropagation();
    if (swallowed.delete(e.code)) return;
    if (modState.has(e.code)) {
      const st = modState.get(e.code);
      if (st === 'held') flushHeld();
      modState.delete(e.code);
      if (st === 'swallowed') return;
    }
    release(e.code);
  }
  // Nothing stays pressed in a guest when the page loses the keyboard.
  function onBlur() {
    for (const code of [...downTo.keys()]) release(code);
    modState.clear(); swallowed.clear();
  }
  window.addEventListener('keydown', onKeyDown, true);
  window.addEventListener('keyup', onKeyUp, true);
  window.addEventListener('blur', onBlur);
  const onResize = () => arrange();
  window.addEventListener('resize', onResize);

  connect();
  return {
    close() {
      closed = true;
      onBlur();
      window.removeEventListener('keydown', onKeyDown, true);
      window.removeEventListener('keyup', onKeyUp, true);
      window.removeEventListener('blur', onBlur);
      window.removeEventListener('resize', onResize);
      for (const t of tiles.values()) closeTile(t);
      tiles.clear();
      if (ws) ws.close();
    },
    // For tests and benchmarks.
    state: () => ({ focus: focusId, full: fullId, broadcast, marked: [...marked], tiles: ordered().map((t) => t.id) }),
    terminalText(id) {
      const t = tiles.get(id);
      if (!t || !t.term) return '';
      const b = t.term.buffer.active;
      let out = '';
      for (let i = 0; i < b.length; i++) out += `${b.getLine(i).translateToString(true)}\n`;
      return out;
    },
  };
};
