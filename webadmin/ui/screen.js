// The VM's screen: noVNC (vendored from the @novnc/novnc package) on the
// panel's WebSocket bridge to the VMM's VNC server. app.js is a classic
// script; this module hands it one function.
import RFB from './vendor/novnc/core/rfb.js';

// X keysyms for the characters a pasted text may hold (US layout).
const SHIFTED = '~!@#$%^&*()_+{}|:"<>?';
const XK_SHIFT_L = 0xffe1;
const XK_RETURN = 0xff0d;
const XK_TAB = 0xff09;

function typeText(rfb, text) {
  for (const ch of text) {
    if (ch === '\n') { rfb.sendKey(XK_RETURN, 'Enter'); continue; }
    if (ch === '\t') { rfb.sendKey(XK_TAB, 'Tab'); continue; }
    const code = ch.codePointAt(0);
    if (code < 0x20 || code > 0x7e) continue;
    const shift = SHIFTED.includes(ch) || (ch >= 'A' && ch <= 'Z');
    if (shift) rfb.sendKey(XK_SHIFT_L, 'ShiftLeft', true);
    rfb.sendKey(code, null);
    if (shift) rfb.sendKey(XK_SHIFT_L, 'ShiftLeft', false);
  }
}

// Opens the screen of VM `id` in `box`; returns a handle with the toolbar's
// actions and close().
window.kvmosScreen = function open(box, id, onState) {
  const rfb = new RFB(box, `wss://${location.host}/api/v1/vms/${encodeURIComponent(id)}/screen`);
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.addEventListener('connect', () => onState('connected'));
  rfb.addEventListener('disconnect', (e) => onState(e.detail.clean ? 'closed' : 'lost'));
  return {
    ctrlAltDel: () => rfb.sendCtrlAltDel(),
    type: (text) => typeText(rfb, text),
    fullscreen: () => box.requestFullscreen && box.requestFullscreen(),
    toggleScale: () => { rfb.scaleViewport = !rfb.scaleViewport; return rfb.scaleViewport; },
    focus: () => rfb.focus(),
    close: () => rfb.disconnect(),
  };
};
