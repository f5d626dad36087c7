//! The VM's screen, keyboard and mouse over VNC: an RFB 3.8 server on a
//! Unix socket (mode 0600) in the VM's run directory, on a thread of its
//! own, for any number of clients at once.
//!
//! - Updates: a client's request is answered with what changed since its
//!   last update, in 64×64 tiles. The display says what may have changed
//!   (register and trapped writes, or KVM's dirty log of the framebuffer);
//!   only then is the screen rendered and compared with what clients were
//!   sent. An idle screen costs one dirty-log ioctl per tick (30 Hz, only
//!   while a client waits for an update) and sends nothing.
//! - Encodings: Raw and ZRLE, DesktopSize for mode changes, and QEMU's
//!   extended key event, so scancodes pass through whatever the browser's
//!   keyboard layout.
//! - Scaling: a client that sends UltraVNC's SetScale gets the screen
//!   shrunk by that factor (each pixel the mean of its block), with
//!   DesktopSize, and its pointer scaled back up. The panel's multiviewer
//!   uses it, so a thumbnail costs the bytes of its own size.
//! - No polling where the guest's writes trap (text and VGA modes): the
//!   display signals an event at the first change after each look. In a
//!   linear (VBE) mode, whose framebuffer the guest writes directly, a
//!   tick reads KVM's dirty log while a client waits: 60 Hz, slowing to
//!   4 Hz after half a second of an unchanged screen and to 1 Hz after
//!   five more, and back to 60 Hz on any change or input.
//! - Input: keys to the PS/2 keyboard; the pointer to the virtio tablet
//!   as an absolute position once the guest's driver runs it, and to the
//!   PS/2 mouse as relative movement before that (firmware, boot loaders,
//!   guests without virtio-input).
//!
//! A client that sends garbage or goes away mid-message is dropped; the VM
//! and the other clients do not notice.

pub mod keysym;
pub use kvmos_rfb as rfb;
pub use kvmos_rfb::client;

use crate::devices::display::stdvga::StdVga;
use crate::devices::display::{Change, Frame};
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::ps2_mouse::{BUTTON_LEFT, BUTTON_MIDDLE, BUTTON_RIGHT};
use crate::devices::virtio::input::TabletHandle;
use rfb::{ClientMessage, PixelFormat, Rect, Zrle, TILE};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

const TOKEN_LISTENER: u64 = 1;
const TOKEN_TIMER: u64 = 2;
const TOKEN_CHANGED: u64 = 3;
const TOKEN_CLIENT_BASE: u64 = 16;
/// How often a linear mode's dirty log is read while a client waits...
const REFRESH: Duration = Duration::from_millis(16);
/// ...and, after this many looks found nothing new, how often instead.
const IDLE_AFTER: u32 = 30;
const REFRESH_IDLE: Duration = Duration::from_millis(250);
/// ...and after this many more (5 s), once a second, as a screen left
/// alone (QEMU backs off to 3 s). Any change or input speeds it up again.
const ASLEEP_AFTER: u32 = IDLE_AFTER + 20;
const REFRESH_ASLEEP: Duration = Duration::from_secs(1);
/// The largest SetScale factor honoured.
const MAX_SCALE: u8 = 16;
/// A client with this much unsent output gets no new updates until it
/// has read some (its tiles stay dirty meanwhile).
const MAX_BACKLOG: usize = 8 << 20;
/// Bytes a client may send before the server has parsed them.
const MAX_INPUT: usize = 2 << 20;

/// What the server drives.
#[derive(Clone)]
pub struct Devices {
    pub display: Arc<Mutex<StdVga>>,
    pub i8042: Arc<Mutex<I8042>>,
    /// The virtio tablet, where the pointer goes once the guest drives it.
    pub tablet: Option<TabletHandle>,
}

/// Starts the server on `listener`; it runs until the process ends.
/// With `filters` (a jailed VMM) the thread runs under the VNC server's
/// seccomp filter.
pub fn spawn(
    listener: UnixListener,
    devices: Devices,
    name: String,
    filters: Option<Arc<crate::seccomp::Filters>>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut server = Server::new(listener, devices, name)?;
    std::thread::Builder::new().name("vnc".into()).spawn(move || {
        if let Err(e) = crate::seccomp::confine(filters.as_deref(), crate::seccomp::Thread::Vnc) {
            tracing::error!("the VNC server is off: {e}");
            return;
        }
        server.run()
    })?;
    Ok(())
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Version,
    Security,
    Init,
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V3_3,
    V3_7,
    V3_8,
}

struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    stage: Stage,
    version: Version,
    format: PixelFormat,
    zrle_on: bool,
    desktop_size: bool,
    extended_keys: bool,
    announce_extended_keys: bool,
    zrle: Zrle,
    /// Tiles changed since this client's last update.
    dirty: Vec<bool>,
    size_changed: bool,
    waiting: bool,
    pointer: Option<(u16, u16)>,
    buttons: u8,
    /// The SetScale factor (1: full size), and the shrunk screen it sees.
    scale: u32,
    view: Frame,
    /// Whether EPOLLOUT is being watched.
    want_write: bool,
}

struct Server {
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    /// The display's change event.
    changed: vmm_sys_util::eventfd::EventFd,
    /// The period the timer runs at, if it runs.
    timer_armed: Option<Duration>,
    /// Looks at the display in a row that found nothing new.
    idle_looks: u32,
    devices: Devices,
    name: String,
    shown: Frame,
    clients: HashMap<u64, Client>,
    next_token: u64,
}

fn tiles(frame: &Frame) -> (u32, u32) {
    (frame.width.div_ceil(TILE), frame.height.div_ceil(TILE))
}

impl Server {
    fn new(listener: UnixListener, devices: Devices, name: String) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        let timer = TimerFd::new().map_err(std::io::Error::from)?;
        let changed = lock(&devices.display).watch()?;
        epoll.ctl(ControlOperation::Add, changed.as_raw_fd(), EpollEvent::new(EventSet::IN, TOKEN_CHANGED))?;
        epoll.ctl(ControlOperation::Add, listener.as_raw_fd(), EpollEvent::new(EventSet::IN, TOKEN_LISTENER))?;
        epoll.ctl(ControlOperation::Add, timer.as_raw_fd(), EpollEvent::new(EventSet::IN, TOKEN_TIMER))?;
        Ok(Self {
            listener,
            epoll,
            timer,
            changed,
            timer_armed: None,
            idle_looks: 0,
            devices,
            name,
            shown: Frame::default(),
            clients: HashMap::new(),
            next_token: TOKEN_CLIENT_BASE,
        })
    }

    fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("VNC server stopped: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_LISTENER => self.accept(),
                    TOKEN_TIMER => {
                        let _ = self.timer.wait();
                        self.refresh();
                    }
                    TOKEN_CHANGED => {
                        let _ = self.changed.read();
                        self.refresh();
                    }
                    token => {
                        let set = ev.event_set();
                        if set.contains(EventSet::OUT) {
                            self.flush(token);
                        }
                        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                            self.readable(token);
                        }
                    }
                }
            }
            self.arm_timer();
        }
    }

    /// While some client waits for an update: the display's change event
    /// is armed, and in a linear mode the timer runs, slower while the
    /// screen stays the same.
    fn arm_timer(&mut self) {
        let period = match self.idle_looks {
            n if n >= ASLEEP_AFTER => REFRESH_ASLEEP,
            n if n >= IDLE_AFTER => REFRESH_IDLE,
            _ => REFRESH,
        };
        let waiting = self.clients.values().any(|c| c.waiting);
        let linear = waiting && {
            let mut display = lock(&self.devices.display);
            display.arm_watch();
            display.linear_mode().is_some()
        };
        let want = linear.then_some(period);
        if want != self.timer_armed {
            let r = match want {
                Some(p) => self.timer.reset(p, Some(p)),
                None => self.timer.clear(),
            };
            if let Err(e) = r {
                tracing::warn!("VNC refresh timer: {e}");
            }
            self.timer_armed = want;
        }
    }

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            let ev = EpollEvent::new(EventSet::IN, token);
            if self.epoll.ctl(ControlOperation::Add, stream.as_raw_fd(), ev).is_err() {
                continue;
            }
            let mut client = Client {
                stream,
                input: Vec::new(),
                output: rfb::VERSION.to_vec(),
                stage: Stage::Version,
                version: Version::V3_8,
                format: PixelFormat::NATIVE,
                zrle_on: false,
                desktop_size: false,
                extended_keys: false,
                announce_extended_keys: false,
                zrle: Zrle::default(),
                dirty: Vec::new(),
                size_changed: false,
                waiting: false,
                pointer: None,
                buttons: 0,
                scale: 1,
                view: Frame::default(),
                want_write: false,
            };
            let _ = client.write_out();
            self.clients.insert(token, client);
            self.flush(token);
        }
    }

    fn drop_client(&mut self, token: u64, why: &str) {
        if let Some(c) = self.clients.remove(&token) {
            tracing::debug!("VNC client {token} gone: {why}");
            let _ = self.epoll.ctl(ControlOperation::Delete, c.stream.as_raw_fd(), EpollEvent::default());
        }
    }

    fn readable(&mut self, token: u64) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let Some(c) = self.clients.get_mut(&token) else { return };
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    // What came before the close still counts (a script
                    // that types and hangs up).
                    let _ = self.process(token);
                    return self.drop_client(token, "closed");
                }
                Ok(n) => {
                    c.input.extend_from_slice(&buf[..n]);
                    if c.input.len() > MAX_INPUT {
                        return self.drop_client(token, "too much unparsed input");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return self.drop_client(token, &e.to_string()),
            }
        }
        if let Err(why) = self.process(token) {
            return self.drop_client(token, &why);
        }
        self.flush(token);
    }

    /// Handles every complete message the client has sent.
    fn process(&mut self, token: u64) -> Result<(), String> {
        loop {
            let Some(c) = self.clients.get_mut(&token) else { return Ok(()) };
            match c.stage {
                Stage::Version => {
                    if c.input.len() < 12 {
                        return Ok(());
                    }
                    let v: Vec<u8> = c.input.drain(..12).collect();
                    if &v[..8] != b"RFB 003." || v[11] != b'\n' {
                        return Err("not an RFB client".into());
                    }
                    let minor: u32 = std::str::from_utf8(&v[8..11]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                    c.version = match minor {
                        0..=6 => Version::V3_3,
                        7 => Version::V3_7,
                        _ => Version::V3_8,
                    };
                    if c.version == Version::V3_3 {
                        c.output.extend_from_slice(&u32::from(rfb::SECURITY_NONE).to_be_bytes());
                        c.stage = Stage::Init;
                    } else {
                        c.output.extend_from_slice(&[1, rfb::SECURITY_NONE]);
                        c.stage = Stage::Security;
                    }
                }
                Stage::Security => {
                    let Some(&choice) = c.input.first() else { return Ok(()) };
                    c.input.drain(..1);
                    if choice != rfb::SECURITY_NONE {
                        if c.version == Version::V3_8 {
                            let reason = b"only security type None is offered";
                            c.output.extend_from_slice(&1u32.to_be_bytes());
                            c.output.extend_from_slice(&(reason.len() as u32).to_be_bytes());
                            c.output.extend_from_slice(reason);
                            let _ = c.write_out();
                        }
                        return Err(format!("asked for security type {choice}"));
                    }
                    if c.version == Version::V3_8 {
                        c.output.extend_from_slice(&0u32.to_be_bytes());
                    }
                    c.stage = Stage::Init;
                }
                Stage::Init => {
                    if c.input.is_empty() {
                        return Ok(());
                    }
                    c.input.drain(..1);
                    self.server_init(token);
                }
                Stage::Normal => {
                    let parsed = rfb::parse(&c.input).map_err(|e| e.to_string())?;
                    let Some((msg, used)) = parsed else { return Ok(()) };
                    c.input.drain(..used);
                    self.message(token, msg)?;
                }
            }
        }
    }

    /// ServerInit: the screen's size, our pixel format and the VM's name.
    fn server_init(&mut self, token: u64) {
        if self.shown.pixels.is_empty() {
            self.shown = lock(&self.devices.display).render();
        }
        let (tx, ty) = tiles(&self.shown);
        let (w, h) = (self.shown.width, self.shown.height);
        let Some(c) = self.clients.get_mut(&token) else { return };
        c.output.extend_from_slice(&(w as u16).to_be_bytes());
        c.output.extend_from_slice(&(h as u16).to_be_bytes());
        c.output.extend_from_slice(&PixelFormat::NATIVE.to_bytes());
        c.output.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        c.output.extend_from_slice(self.name.as_bytes());
        c.dirty = vec![true; (tx * ty) as usize];
        c.stage = Stage::Normal;
    }

    fn message(&mut self, token: u64, msg: ClientMessage) -> Result<(), String> {
        let Some(c) = self.clients.get_mut(&token) else { return Ok(()) };
        match msg {
            ClientMessage::SetPixelFormat(f) => {
                if !f.supported() {
                    return Err(format!("unsupported pixel format {f:?}"));
                }
                c.format = f;
                c.dirty.fill(true);
            }
            ClientMessage::SetEncodings(list) => {
                c.zrle_on = list.iter().take_while(|&&e| e != rfb::ENCODING_RAW).any(|&e| e == rfb::ENCODING_ZRLE);
                c.desktop_size = list.contains(&rfb::ENCODING_DESKTOP_SIZE);
                let ext = list.contains(&rfb::ENCODING_QEMU_EXTENDED_KEY);
                c.announce_extended_keys = ext && !c.extended_keys;
                c.extended_keys = ext;
            }
            ClientMessage::UpdateRequest { incremental, .. } => {
                // As QEMU does, the area asked for is not honoured: the
                // client gets whatever changed on the whole screen.
                if !incremental {
                    c.dirty.fill(true);
                }
                c.waiting = true;
                self.send_update(token);
            }
            ClientMessage::SetScale(scale) => {
                let scale = u32::from(scale.clamp(1, MAX_SCALE));
                if scale != c.scale {
                    c.scale = scale;
                    c.view = shrunk(&self.shown, scale);
                    c.dirty.fill(true);
                    c.size_changed = true;
                }
            }
            ClientMessage::Key { down, keysym } => {
                self.idle_looks = 0;
                if let Some(xt) = keysym::to_xt(keysym) {
                    lock(&self.devices.i8042).key(xt, down);
                }
            }
            ClientMessage::ExtendedKey { down, keysym, keycode } => {
                self.idle_looks = 0;
                let xt = match keycode {
                    1..=0xFF => Some(keycode as u8),
                    _ => keysym::to_xt(keysym),
                };
                if let Some(xt) = xt {
                    lock(&self.devices.i8042).key(xt, down);
                }
            }
            ClientMessage::Pointer { buttons, x, y } => {
                self.idle_looks = 0;
                // A scaled client points into its shrunk screen: the
                // middle of the block it points at.
                let up = |v: u16, size: u32| {
                    let v = u32::from(v) * c.scale + c.scale / 2;
                    v.min(size.saturating_sub(1)).min(u32::from(u16::MAX)) as u16
                };
                let (x, y) = if c.scale > 1 { (up(x, self.shown.width), up(y, self.shown.height)) } else { (x, y) };
                let (dx, dy) = match c.pointer {
                    Some((px, py)) => (i32::from(x) - i32::from(px), i32::from(y) - i32::from(py)),
                    None => (0, 0),
                };
                c.pointer = Some((x, y));
                // Wheel "buttons" 4 and 5 count once, when pressed.
                let pressed = buttons & !c.buttons;
                c.buttons = buttons;
                let dz = i32::from(pressed & 0x10 != 0) - i32::from(pressed & 0x08 != 0);
                if let Some(tablet) = self.devices.tablet.as_ref().filter(|t| t.driven()) {
                    let held = buttons & 0x07;
                    let (w, h) = (self.shown.width, self.shown.height);
                    tablet.pointer(u32::from(x), u32::from(y), w, h, held, -dz);
                    return Ok(());
                }
                let mut ps2 = 0;
                for (rfb_bit, ps2_bit) in [(1, BUTTON_LEFT), (2, BUTTON_MIDDLE), (4, BUTTON_RIGHT)] {
                    if buttons & rfb_bit != 0 {
                        ps2 |= ps2_bit;
                    }
                }
                lock(&self.devices.i8042).mouse_movement(dx, dy, dz, ps2);
            }
            ClientMessage::CutText => {}
        }
        Ok(())
    }

    /// Looks at the display; marks changed tiles dirty for every client;
    /// answers the clients that wait.
    fn refresh(&mut self) {
        if !self.clients.values().any(|c| c.waiting) {
            return;
        }
        let (change, frame) = {
            let mut display = lock(&self.devices.display);
            match display.take_change() {
                Change::None => {
                    self.idle_looks = self.idle_looks.saturating_add(1);
                    return;
                }
                // The dirty rows of a linear mode are drawn over the last
                // frame; anything else is drawn whole.
                Change::Rows(first, count) => {
                    let mut frame = self.shown.clone();
                    if !display.render_rows(&mut frame, first..first.saturating_add(count)) {
                        frame = display.render();
                    }
                    (Change::Rows(first, count), frame)
                }
                change => (change, display.render()),
            }
        };
        if (frame.width, frame.height) != (self.shown.width, self.shown.height) {
            let (tx, ty) = tiles(&frame);
            for c in self.clients.values_mut() {
                c.dirty = vec![true; (tx * ty) as usize];
                c.size_changed = true;
                c.view = shrunk(&frame, c.scale);
            }
            self.shown = frame;
        } else {
            let rows = match change {
                Change::Rows(first, count) => first..(first + count).min(frame.height),
                _ => 0..frame.height,
            };
            let changed = changed_tiles(&self.shown, &frame, rows);
            if changed.is_empty() {
                self.idle_looks = self.idle_looks.saturating_add(1);
                return;
            }
            let (tx, _) = tiles(&frame);
            for c in self.clients.values_mut() {
                for &(x, y) in &changed {
                    if let Some(d) = c.dirty.get_mut((y * tx + x) as usize) {
                        *d = true;
                    }
                }
            }
            self.shown = frame;
        }
        self.idle_looks = 0;
        let tokens: Vec<u64> = self.clients.keys().copied().collect();
        for t in tokens {
            self.send_update(t);
            self.flush(t);
        }
    }

    /// Sends a waiting client what is dirty for it, if anything is.
    fn send_update(&mut self, token: u64) {
        let frame = &self.shown;
        let Some(c) = self.clients.get_mut(&token) else { return };
        if !c.waiting || c.output.len() > MAX_BACKLOG {
            return;
        }
        let mut rects = dirty_rects(&c.dirty, frame);
        // A scaled client: the dirty areas of its shrunk screen, brought
        // up to date from the full one.
        if c.scale > 1 {
            let s = c.scale;
            for r in &mut rects {
                let (x0, y0) = (r.x / s, r.y / s);
                let (x1, y1) = ((r.x + r.w).div_ceil(s).min(c.view.width), (r.y + r.h).div_ceil(s).min(c.view.height));
                *r = Rect { x: x0, y: y0, w: x1.saturating_sub(x0), h: y1.saturating_sub(y0) };
                frame.shrink_into(&mut c.view, s, (r.x, r.y, r.w, r.h));
            }
            rects.retain(|r| r.w > 0 && r.h > 0);
        }
        let source = if c.scale > 1 { &c.view } else { frame };
        let resize = c.size_changed && c.desktop_size;
        let announce = c.announce_extended_keys;
        let count = rects.len() + usize::from(resize) + usize::from(announce);
        if count == 0 {
            return;
        }
        let mut out = vec![0u8, 0];
        out.extend_from_slice(&(count.min(usize::from(u16::MAX)) as u16).to_be_bytes());
        let screen = Rect { x: 0, y: 0, w: source.width, h: source.height };
        if announce {
            rfb::rect_header(&mut out, screen, rfb::ENCODING_QEMU_EXTENDED_KEY);
        }
        if resize {
            rfb::rect_header(&mut out, screen, rfb::ENCODING_DESKTOP_SIZE);
        }
        for r in rects {
            if c.zrle_on {
                rfb::rect_header(&mut out, r, rfb::ENCODING_ZRLE);
                c.zrle.encode(&mut out, source, &c.format, r);
            } else {
                rfb::rect_header(&mut out, r, rfb::ENCODING_RAW);
                rfb::encode_raw(&mut out, source, &c.format, r);
            }
        }
        c.output.extend_from_slice(&out);
        c.dirty.fill(false);
        c.size_changed = false;
        c.announce_extended_keys = false;
        c.waiting = false;
    }

    /// Writes what the client can take; watches for writability while
    /// output is left.
    fn flush(&mut self, token: u64) {
        let Some(c) = self.clients.get_mut(&token) else { return };
        if let Err(e) = c.write_out() {
            return self.drop_client(token, &e.to_string());
        }
        let want = !c.output.is_empty();
        if want != c.want_write {
            let set = if want { EventSet::IN | EventSet::OUT } else { EventSet::IN };
            let _ = self.epoll.ctl(ControlOperation::Modify, c.stream.as_raw_fd(), EpollEvent::new(set, token));
            c.want_write = want;
        }
        if !want && c.waiting {
            self.send_update(token);
            if let Some(c) = self.clients.get_mut(&token) {
                if let Err(e) = c.write_out() {
                    self.drop_client(token, &e.to_string());
                }
            }
        }
    }
}

impl Client {
    fn write_out(&mut self) -> std::io::Result<()> {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return Err(std::io::Error::other("connection closed")),
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The dirty tiles as rectangles of the screen: runs of dirty tiles in
/// each row of tiles.
fn dirty_rects(dirty: &[bool], frame: &Frame) -> Vec<Rect> {
    let (tx, ty) = tiles(frame);
    let is_dirty = |x: u32, y: u32| dirty.get((y * tx + x) as usize).copied().unwrap_or(false);
    let mut rects: Vec<Rect> = Vec::new();
    for y in 0..ty {
        let mut x = 0;
        while x < tx {
            if !is_dirty(x, y) {
                x += 1;
                continue;
            }
            let start = x;
            while x < tx && is_dirty(x, y) {
                x += 1;
            }
            let (px, py) = (start * TILE, y * TILE);
            let r = Rect { x: px, y: py, w: (x * TILE).min(frame.width) - px, h: TILE.min(frame.height - py) };
            // The same run in the row of tiles above: one taller rectangle
            // (a whole dirty screen is one rectangle, as QEMU sends it).
            match rects.iter_mut().rev().find(|p| p.x == r.x && p.w == r.w && p.y + p.h == r.y) {
                Some(above) => above.h += r.h,
                None => rects.push(r),
            }
        }
    }
    rects
}

/// An empty screen the size of `frame` shrunk by `scale` (none at 1).
fn shrunk(frame: &Frame, scale: u32) -> Frame {
    if scale <= 1 {
        return Frame::default();
    }
    let (w, h) = frame.scaled_size(scale);
    Frame::new(w, h)
}

/// The tiles (column, row) where `new` differs from `old` within `rows`.
fn changed_tiles(old: &Frame, new: &Frame, rows: std::ops::Range<u32>) -> Vec<(u32, u32)> {
    let (tx, _) = tiles(new);
    let mut out = Vec::new();
    let w = new.width as usize;
    let mut ty = rows.start / TILE;
    while ty * TILE < rows.end {
        for x in 0..tx {
            let (x0, x1) = ((x * TILE) as usize, ((x + 1) * TILE).min(new.width) as usize);
            let y0 = (ty * TILE).max(rows.start);
            let y1 = ((ty + 1) * TILE).min(rows.end);
            let differs = (y0..y1).any(|y| {
                let line = y as usize * w;
                old.pixels[line + x0..line + x1] != new.pixels[line + x0..line + x1]
            });
            if differs {
                out.push((x, ty));
            }
        }
        ty += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_tiles_become_few_rectangles() {
        let f = Frame::new(200, 130); // 4×3 tiles, the last column and row partial
        let all = vec![true; 12];
        assert_eq!(dirty_rects(&all, &f), [Rect { x: 0, y: 0, w: 200, h: 130 }], "a whole screen is one");
        // Rows 0 and 1 dirty in columns 1-2, row 2 only in column 0.
        let mut d = vec![false; 12];
        for i in [1, 2, 5, 6, 8] {
            d[i] = true;
        }
        assert_eq!(dirty_rects(&d, &f), [Rect { x: 64, y: 0, w: 128, h: 128 }, Rect { x: 0, y: 128, w: 64, h: 2 }]);
    }

    #[test]
    fn changed_tiles_are_found_within_the_dirty_rows() {
        let old = Frame::new(200, 130);
        let mut new = old.clone();
        new.pixels[(70 * 200 + 150) as usize] = 1;
        new.pixels[(5 * 200 + 5) as usize] = 1;
        assert_eq!(changed_tiles(&old, &new, 0..130), [(0, 0), (2, 1)]);
        assert_eq!(changed_tiles(&old, &new, 64..128), [(2, 1)], "rows outside are not looked at");
    }
}
