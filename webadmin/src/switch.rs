//! The KVM switch: every running VM's screen on one page, with one keyboard.
//!
//! - `GET /api/v1/screens`: the running VMs and the kind of screen each has
//!   (`display`: a VNC server; `serial`: a serial console only).
//! - `POST /api/v1/screens/keys`: a text and key combinations to one VM or
//!   several, for scripts (see [`crate::keys`]).
//! - `GET/PUT /api/v1/switch/settings`: the grid layout, the hotkey scheme
//!   and mouse roaming, as the admin chose them.
//! - `GET /api/v1/switch` (WebSocket): the Switch page's one connection.
//!   The page says which tiles it shows and at what size; for each display
//!   tile the panel holds a VNC connection to the VMM that asked for the
//!   screen shrunk to fit (UltraVNC's SetScale, done in the VMM), requests
//!   updates at most [`TILE_FPS`] times a second, and sends the page only
//!   the area that changed, as a PNG. An idle screen sends nothing: the
//!   request waits in the VMM until the guest draws. The list of screens
//!   comes on the same connection when it changes (VMs started, stopped,
//!   paused), looked at once a second in the panel, so an idle page costs
//!   no bytes at all. Keys from the page go
//!   to the VMs it names through the same connections (serial consoles get
//!   the terminal's bytes), so a switch of focus needs no new connection.
//!   The focused tile itself is a full-size noVNC view on the screen
//!   WebSocket ([`crate::console::screen`]).

use crate::app::{ApiError, ApiJson, ApiResult, State};
use crate::auth::Caller;
use crate::keys::{self, Stroke};
use crate::store::{load_json, lock, save_json};
use crate::supervisor::VmState;
use crate::vms::Boot;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kvmos_rfb as rfb;
use kvmos_rfb::client::Viewer;
use kvmos_rfb::frame::Frame;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use utoipa::ToSchema;

/// The most updates a second an unfocused tile gets.
pub const TILE_FPS: f64 = 1.0;
/// The smallest and largest shrink factors a tile asks for.
const MAX_SCALE: u32 = 16;
/// Binary messages to the page: a tile's changed area.
const FRAME_PATCH: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScreenKind {
    /// A display adapter, keyboard and mouse, through the VMM's VNC server.
    Display,
    /// A serial console only (VMs that boot a kernel directly).
    Serial,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Screen {
    pub id: String,
    pub name: String,
    pub state: VmState,
    pub kind: ScreenKind,
}

fn kind_of(boot: &Boot) -> ScreenKind {
    match boot {
        Boot::Firmware { .. } => ScreenKind::Display,
        _ => ScreenKind::Serial,
    }
}

fn screens(state: &State) -> Vec<Screen> {
    let mut list: Vec<Screen> = state
        .vms
        .list()
        .into_iter()
        .filter_map(|r| {
            let vm_state = state.supervisor.state(&r.id);
            (vm_state != VmState::Stopped).then(|| Screen {
                kind: kind_of(&r.spec.boot),
                name: r.spec.name,
                id: r.id,
                state: vm_state,
            })
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

/// The screens of the running VMs, by name.
#[utoipa::path(get, path = "/api/v1/screens", responses((status = 200, body = Vec<Screen>)))]
pub async fn list_screens(axum::extract::State(state): axum::extract::State<State>) -> Json<Vec<Screen>> {
    Json(screens(&state))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeysRequest {
    /// The VMs (ids) that get the keys, all of them the same.
    pub vms: Vec<String>,
    /// Typed first, as on a US keyboard; `\n` is Enter.
    #[serde(default)]
    pub text: Option<String>,
    /// Then these combinations, in order: `enter`, `ctrl+alt+delete`, `f2`.
    #[serde(default)]
    pub keys: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeysSent {
    /// Per VM: key events (a screen) or bytes (a serial console) sent.
    pub sent: Vec<SentTo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SentTo {
    pub id: String,
    pub kind: ScreenKind,
    pub events: usize,
}

/// What one VM gets.
enum Delivery {
    Strokes(PathBuf, Vec<Stroke>),
    Bytes(PathBuf, Vec<u8>),
}

/// Types a text and key combinations into one VM or several.
#[utoipa::path(post, path = "/api/v1/screens/keys", request_body = KeysRequest,
    responses((status = 200, body = KeysSent), (status = 400, body = ApiError), (status = 404, body = ApiError),
              (status = 409, body = ApiError)))]
pub async fn send_keys(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<KeysRequest>,
) -> ApiResult<Json<KeysSent>> {
    let r = plan_keys(&state, &req);
    let target = req.vms.join(",");
    let plan = match r {
        Ok(plan) => plan,
        Err(e) => {
            state.audit(&caller, "screens.keys", &target, &Err::<(), _>(e.clone()));
            return Err(e);
        }
    };
    let mut sent = Vec::new();
    let mut outcome = Ok(());
    for (id, delivery) in plan {
        let (kind, events) = match &delivery {
            Delivery::Strokes(_, s) => (ScreenKind::Display, s.len()),
            Delivery::Bytes(_, b) => (ScreenKind::Serial, b.len()),
        };
        let done = tokio::task::spawn_blocking(move || deliver(&delivery)).await;
        match done {
            Ok(Ok(())) => sent.push(SentTo { id, kind, events }),
            Ok(Err(e)) => {
                outcome =
                    Err(ApiError::conflict(format!("VM {id}: the keys did not all arrive ({e}); is it running?")));
                break;
            }
            Err(e) => {
                outcome = Err(ApiError::internal(e));
                break;
            }
        }
    }
    state.audit(&caller, "screens.keys", &target, &outcome);
    outcome?;
    Ok(Json(KeysSent { sent }))
}

/// Checks the request and turns it into what each VM gets, before any key
/// is sent: a mistake sends nothing.
fn plan_keys(state: &State, req: &KeysRequest) -> ApiResult<Vec<(String, Delivery)>> {
    if req.vms.is_empty() {
        return Err(ApiError::bad("vms", "name at least one VM (its id) to send the keys to"));
    }
    if req.text.as_deref().unwrap_or("").is_empty() && req.keys.is_empty() {
        return Err(ApiError::bad("text", "give a \"text\" to type or \"keys\" to press"));
    }
    let mut plan = Vec::new();
    for (i, id) in req.vms.iter().enumerate() {
        let vm = state.vms.get(id).map_err(|_| ApiError::field(404, &format!("vms[{i}]"), format!("no VM {id}")))?;
        if state.supervisor.state(id) == VmState::Stopped {
            return Err(ApiError::field(
                409,
                &format!("vms[{i}]"),
                format!("{} is not running; start it first", vm.spec.name),
            ));
        }
        let text = req.text.as_deref().unwrap_or("");
        let delivery = match kind_of(&vm.spec.boot) {
            ScreenKind::Display => {
                let mut strokes = keys::text_strokes(text).map_err(|e| ApiError::bad("text", e))?;
                for (k, combo) in req.keys.iter().enumerate() {
                    strokes.extend(keys::combo_strokes(combo).map_err(|e| ApiError::bad(&format!("keys[{k}]"), e))?);
                }
                Delivery::Strokes(state.supervisor.vnc_socket(id), strokes)
            }
            ScreenKind::Serial => {
                let mut bytes = keys::text_bytes(text).map_err(|e| ApiError::bad("text", e))?;
                for (k, combo) in req.keys.iter().enumerate() {
                    let b = keys::combo_bytes(combo).map_err(|e| {
                        ApiError::bad(
                            &format!("keys[{k}]"),
                            format!("{e} ({} has only a serial console)", vm.spec.name),
                        )
                    })?;
                    bytes.extend(b);
                }
                Delivery::Bytes(state.supervisor.console_socket(id), bytes)
            }
        };
        plan.push((id.clone(), delivery));
    }
    Ok(plan)
}

/// Sends one VM its keys over a connection of its own.
fn deliver(d: &Delivery) -> std::io::Result<()> {
    match d {
        Delivery::Strokes(sock, strokes) => {
            let s = UnixStream::connect(sock)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.set_write_timeout(Some(Duration::from_secs(5)))?;
            let mut v = Viewer::over(s, &[rfb::ENCODING_QEMU_EXTENDED_KEY])?;
            for st in strokes {
                v.scancode(u32::from(st.scancode), st.down)?;
            }
            Ok(())
        }
        Delivery::Bytes(sock, bytes) => {
            let mut s = UnixStream::connect(sock)?;
            s.set_write_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(bytes)
        }
    }
}

// ---- settings ----

/// How the Switch page looks and which keys move the focus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchSettings {
    /// `auto`, `1`, `2x2`, `3x3` or `4x4`.
    pub layout: String,
    /// The modifiers held with 1-9, Left, Right, Enter (full screen), 0
    /// (the grid) and B (broadcast off): `ctrl+alt`, `ctrl+shift`,
    /// `alt+shift` or `ctrl+alt+shift`.
    pub modifiers: String,
    /// The key pressed twice for the next tile: `scrolllock`, `pause` or
    /// `off`. It never reaches a guest.
    pub double_tap: String,
    /// Moving the pointer over a tile gives it the focus.
    pub roaming: bool,
}

impl Default for SwitchSettings {
    fn default() -> Self {
        Self { layout: "auto".into(), modifiers: "ctrl+alt".into(), double_tap: "scrolllock".into(), roaming: false }
    }
}

const LAYOUTS: &[&str] = &["auto", "1", "2x2", "3x3", "4x4"];
const MODIFIERS: &[&str] = &["ctrl+alt", "ctrl+shift", "alt+shift", "ctrl+alt+shift"];
const DOUBLE_TAPS: &[&str] = &["scrolllock", "pause", "off"];

impl SwitchSettings {
    fn validate(&self) -> ApiResult<()> {
        let one_of = |field: &str, v: &str, allowed: &[&str]| {
            if allowed.contains(&v) {
                Ok(())
            } else {
                Err(ApiError::bad(field, format!("{v:?} is not a choice; use one of {}", allowed.join(", "))))
            }
        };
        one_of("layout", &self.layout, LAYOUTS)?;
        one_of("modifiers", &self.modifiers, MODIFIERS)?;
        one_of("double_tap", &self.double_tap, DOUBLE_TAPS)
    }
}

fn settings_path(state: &State) -> PathBuf {
    state.paths.data_dir.join("switch.json")
}

#[utoipa::path(get, path = "/api/v1/switch/settings", responses((status = 200, body = SwitchSettings)))]
pub async fn get_settings(axum::extract::State(state): axum::extract::State<State>) -> ApiResult<Json<SwitchSettings>> {
    Ok(Json(load_json(&settings_path(&state))?.unwrap_or_default()))
}

#[utoipa::path(put, path = "/api/v1/switch/settings", request_body = SwitchSettings,
    responses((status = 200, body = SwitchSettings), (status = 400, body = ApiError)))]
pub async fn put_settings(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    ApiJson(s): ApiJson<SwitchSettings>,
) -> ApiResult<Json<SwitchSettings>> {
    let r = s.validate().and_then(|()| save_json(&settings_path(&state), &s).map_err(ApiError::from));
    state.audit(&caller, "switch.settings", &format!("{} {}", s.layout, s.modifiers), &r);
    r?;
    Ok(Json(s))
}

// ---- the Switch page's WebSocket ----

/// The Switch page's connection: tiles out, keys in (see the module docs).
#[utoipa::path(get, path = "/api/v1/switch",
    responses((status = 101, description = "WebSocket: JSON messages in ({\"watch\": …}, {\"key\": …}); tile patches out as binary messages"),
              (status = 403, body = ApiError)))]
pub async fn switch_ws(
    axum::extract::State(state): axum::extract::State<State>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !crate::console::same_origin(&headers) {
        return ApiError::new(403, "the switch opens only from the panel's own pages").into_response();
    }
    ws.on_upgrade(move |socket| session(state, socket))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum PageMessage {
    /// The tiles on the page now (others are dropped).
    Watch { tiles: Vec<Watch> },
    /// A key to these VMs.
    Key {
        to: Vec<String>,
        /// XT scancode, QEMU's numbering.
        scancode: u16,
        down: bool,
        /// What a terminal sends for it (on the way down), for serial VMs.
        #[serde(default)]
        bytes: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Watch {
    id: String,
    /// The tile's size on the page, in pixels.
    width: u32,
    height: u32,
    /// Whether to send its pictures (the focused tile has noVNC and only
    /// takes keys from here).
    #[serde(default = "yes")]
    frames: bool,
}

fn yes() -> bool {
    true
}

async fn session(state: State, mut ws: WebSocket) {
    let (tx, mut rx) = mpsc::channel::<Message>(32);
    let mut tiles: HashMap<String, Tile> = HashMap::new();
    let mut consoles: HashMap<String, tokio::net::unix::OwnedWriteHalf> = HashMap::new();
    let mut listed: Option<Vec<Screen>> = None;
    let mut look = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = look.tick() => {
                let now = screens(&state);
                if listed.as_ref() != Some(&now) {
                    let m = serde_json::json!({ "screens": now }).to_string();
                    if ws.send(Message::Text(m.into())).await.is_err() { break }
                    listed = Some(now);
                }
            },
            out = rx.recv() => match out {
                Some(m) => if ws.send(m).await.is_err() { break },
                None => break,
            },
            msg = ws.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let reply = match serde_json::from_str::<PageMessage>(&t) {
                        Ok(m) => handle(&state, m, &mut tiles, &mut consoles, &tx).await.err(),
                        Err(e) => Some(format!("not a switch message ({e})")),
                    };
                    if let Some(error) = reply {
                        let m = serde_json::json!({ "error": error }).to_string();
                        if ws.send(Message::Text(m.into())).await.is_err() { break }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    // Dropping the tiles closes their VNC connections.
}

async fn handle(
    state: &State,
    msg: PageMessage,
    tiles: &mut HashMap<String, Tile>,
    consoles: &mut HashMap<String, tokio::net::unix::OwnedWriteHalf>,
    tx: &mpsc::Sender<Message>,
) -> Result<(), String> {
    match msg {
        PageMessage::Watch { tiles: wanted } => {
            tiles.retain(|id, _| wanted.iter().any(|w| &w.id == id));
            for w in wanted {
                let Ok(vm) = state.vms.get(&w.id) else { continue };
                if kind_of(&vm.spec.boot) != ScreenKind::Display || state.supervisor.state(&w.id) == VmState::Stopped {
                    continue;
                }
                if tiles.get(&w.id).is_some_and(|t| t.ended()) {
                    tiles.remove(&w.id);
                }
                let tile = tiles
                    .entry(w.id.clone())
                    .or_insert_with(|| Tile::open(w.id.clone(), state.supervisor.vnc_socket(&w.id), tx.clone()));
                tile.want(w.width, w.height, w.frames);
            }
            Ok(())
        }
        PageMessage::Key { to, scancode, down, bytes } => {
            for id in to {
                if let Some(tile) = tiles.get(&id) {
                    tile.key(scancode, down).map_err(|e| format!("VM {id}: {e}"))?;
                    continue;
                }
                if !down || bytes.is_empty() {
                    continue;
                }
                let vm = state.vms.get(&id).map_err(|e| e.message)?;
                if kind_of(&vm.spec.boot) == ScreenKind::Display {
                    return Err(format!("{} is not on the page; watch it first", vm.spec.name));
                }
                if !consoles.contains_key(&id) {
                    let stream = tokio::net::UnixStream::connect(state.supervisor.console_socket(&id))
                        .await
                        .map_err(|_| format!("{} is not running", vm.spec.name))?;
                    let (mut read, write) = stream.into_split();
                    // The console replays and streams its output to every
                    // client; the page has its own, so this one drains it.
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 8192];
                        while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
                    });
                    consoles.insert(id.clone(), write);
                }
                let ok = match consoles.get_mut(&id) {
                    Some(w) => w.write_all(bytes.as_bytes()).await.is_ok(),
                    None => false,
                };
                if !ok {
                    consoles.remove(&id);
                    return Err(format!("{} is not running", vm.spec.name));
                }
            }
            Ok(())
        }
    }
}

/// A display tile: a VNC connection to the VM's VMM on a thread of its own.
struct Tile {
    shared: Arc<TileShared>,
}

struct TileShared {
    state: Mutex<TileState>,
    wake: Condvar,
    /// The connection's writing side, shared by the thread (update
    /// requests) and the session (keys, scale changes).
    writer: Mutex<Option<UnixStream>>,
}

#[derive(Default)]
struct TileState {
    /// The tile's size on the page.
    want: (u32, u32),
    frames: bool,
    /// The guest's screen size, and the shrink factor asked for.
    full: (u32, u32),
    scale: u32,
    stop: bool,
    ended: bool,
}

/// The shrink factor that fits a `full` screen into a `want` tile.
fn fit(full: (u32, u32), want: (u32, u32)) -> u32 {
    let s = full.0.div_ceil(want.0.max(1)).max(full.1.div_ceil(want.1.max(1)));
    s.clamp(1, MAX_SCALE)
}

impl TileShared {
    fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        match lock(&self.writer).as_mut() {
            Some(w) => w.write_all(bytes),
            None => Err(std::io::Error::new(std::io::ErrorKind::NotConnected, "the screen is not connected yet")),
        }
    }

    /// Asks the VMM for the factor that fits the tile, if it changed.
    fn rescale(&self, st: &mut TileState) -> std::io::Result<()> {
        if st.full == (0, 0) {
            return Ok(());
        }
        let s = fit(st.full, st.want);
        if s != st.scale {
            st.scale = s;
            self.write(&[8, s as u8, 0, 0])?;
        }
        Ok(())
    }
}

/// Writes through the tile's shared writer (the Viewer's requests).
struct Duplex {
    read: UnixStream,
    shared: Arc<TileShared>,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read.read(buf)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.write(buf).map(|()| buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Tile {
    fn open(id: String, sock: PathBuf, out: mpsc::Sender<Message>) -> Self {
        let shared = Arc::new(TileShared {
            state: Mutex::new(TileState { scale: 1, ..TileState::default() }),
            wake: Condvar::new(),
            writer: Mutex::new(None),
        });
        let s = shared.clone();
        let spawned = std::thread::Builder::new().name("switch-tile".into()).spawn(move || {
            let r = run_tile(&id, &sock, &s, &out);
            lock(&s.state).ended = true;
            if let Err(e) = r {
                if !lock(&s.state).stop {
                    let m = serde_json::json!({ "tile_ended": { "id": id, "error": e.to_string() } }).to_string();
                    let _ = out.blocking_send(Message::Text(m.into()));
                }
            }
        });
        if spawned.is_err() {
            lock(&shared.state).ended = true;
        }
        Self { shared }
    }

    fn ended(&self) -> bool {
        lock(&self.shared.state).ended
    }

    fn want(&self, width: u32, height: u32, frames: bool) {
        let mut st = lock(&self.shared.state);
        st.want = (width.max(1), height.max(1));
        st.frames = frames;
        let _ = self.shared.rescale(&mut st);
        self.shared.wake.notify_all();
    }

    fn key(&self, scancode: u16, down: bool) -> std::io::Result<()> {
        let mut msg = vec![255, 0];
        msg.extend_from_slice(&u16::from(down).to_be_bytes());
        msg.extend_from_slice(&0u32.to_be_bytes());
        msg.extend_from_slice(&u32::from(scancode).to_be_bytes());
        self.shared.write(&msg)
    }
}

impl Drop for Tile {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_all();
        if let Some(w) = lock(&self.shared.writer).as_ref() {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The tile's thread: connects, then requests, receives and forwards
/// updates at most [`TILE_FPS`] a second while the page wants pictures.
fn run_tile(
    id: &str,
    sock: &std::path::Path,
    shared: &Arc<TileShared>,
    out: &mpsc::Sender<Message>,
) -> std::io::Result<()> {
    let stream = UnixStream::connect(sock)?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    *lock(&shared.writer) = Some(stream.try_clone()?);
    if lock(&shared.state).stop {
        return Ok(());
    }
    let encodings = [rfb::ENCODING_ZRLE, rfb::ENCODING_DESKTOP_SIZE, rfb::ENCODING_QEMU_EXTENDED_KEY];
    let mut v = Viewer::over(Duplex { read: stream, shared: shared.clone() }, &encodings)?;
    lock(&shared.state).full = (v.width, v.height);
    let period = Duration::from_secs_f64(1.0 / TILE_FPS);
    let mut shown = (v.width, v.height);
    // What the page holds: patches are cut to the pixels that differ.
    let mut last: Vec<u32> = Vec::new();
    let mut incremental = false;
    loop {
        {
            let mut st = lock(&shared.state);
            while !st.frames && !st.stop {
                st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.stop {
                return Ok(());
            }
            shared.rescale(&mut st)?;
        }
        let started = Instant::now();
        v.request(incremental)?;
        v.update()?;
        incremental = true;
        if (v.width, v.height) != shown {
            // A new size: the guest changed mode, or the scale changed.
            shown = (v.width, v.height);
            let mut st = lock(&shared.state);
            st.full = (v.width * st.scale, v.height * st.scale);
        }
        if let Some(patch) = patch(id, &v, &mut last) {
            if out.blocking_send(Message::Binary(patch.into())).is_err() {
                return Ok(());
            }
        }
        std::thread::sleep(period.saturating_sub(started.elapsed()));
    }
}

/// The area the last update changed, as a message to the page: kind, the
/// VM's id, the tile's screen size, the area's place, then the area as a
/// PNG. The area is cut down to the pixels that differ from `last` (what
/// the page holds, updated here): the VMM sends whole 64-pixel tiles.
/// `None` when nothing changed.
fn patch<S: Read + Write>(id: &str, v: &Viewer<S>, last: &mut Vec<u32>) -> Option<Vec<u8>> {
    let fresh = last.len() != v.pixels.len();
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for &(rx, ry, rw, rh) in &v.changed {
        for y in ry..(ry + rh).min(v.height) {
            for x in rx..(rx + rw).min(v.width) {
                let i = (y * v.width + x) as usize;
                if fresh || last[i] != v.pixels[i] {
                    (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
                }
            }
        }
    }
    if fresh {
        (x0, y0, x1, y1) = (0, 0, v.width, v.height);
        *last = v.pixels.clone();
    }
    if x0 >= x1 || y0 >= y1 {
        return None;
    }
    let mut area = Frame::new(x1 - x0, y1 - y0);
    for row in y0..y1 {
        let from = (row * v.width + x0) as usize;
        let to = ((row - y0) * area.width) as usize;
        let n = area.width as usize;
        area.pixels[to..to + n].copy_from_slice(&v.pixels[from..from + n]);
        last[from..from + n].copy_from_slice(&v.pixels[from..from + n]);
    }
    let mut msg = vec![FRAME_PATCH, id.len() as u8];
    msg.extend_from_slice(id.as_bytes());
    for n in [v.width, v.height, x0, y0] {
        msg.extend_from_slice(&(n as u16).to_be_bytes());
    }
    msg.extend_from_slice(&area.to_png());
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tile_asks_for_the_factor_that_fits() {
        assert_eq!(fit((720, 400), (360, 200)), 2);
        assert_eq!(fit((720, 400), (300, 300)), 3, "the width decides");
        assert_eq!(fit((1024, 768), (2000, 2000)), 1, "never larger than the screen");
        assert_eq!(fit((1920, 1080), (10, 10)), MAX_SCALE);
        assert_eq!(fit((640, 480), (0, 0)), MAX_SCALE, "a hidden tile");
    }

    #[test]
    fn settings_are_checked_against_the_choices() {
        assert!(SwitchSettings::default().validate().is_ok());
        let bad = SwitchSettings { layout: "5x5".into(), ..SwitchSettings::default() };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.field.as_deref(), Some("layout"));
        assert!(e.message.contains("auto, 1, 2x2, 3x3, 4x4"), "{}", e.message);
        let bad = SwitchSettings { double_tap: "capslock".into(), ..SwitchSettings::default() };
        assert_eq!(bad.validate().unwrap_err().field.as_deref(), Some("double_tap"));
    }
}
