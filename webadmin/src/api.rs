//! The REST API, `/api/v1`, JSON. Handlers are annotated for utoipa, so the
//! OpenAPI document at `/api/v1/openapi.json` is generated from the same
//! types and paths the router serves; the auth test walks that document.
//!
//! Public: `GET /api/v1/health` (liveness: status and version), and the
//! setup and login calls. Everything else goes through [`require_auth`].

use crate::app::{ApiError, ApiJson, ApiResult, State};
use crate::auth::{self, Caller, TokenInfo, CSRF_HEADER, SESSION_COOKIE, SESSION_MAX};
use crate::download::Checksum;
use crate::host::{self, HostSettings, Overview, PowerAction};
use crate::images::{check_name, BundledGuest, Image, ImageKind};
use crate::store::now_unix;
use crate::supervisor::VmState;
use crate::tasks::TaskView;
use crate::vms::{HostCapacity, Run, VmRecord, VmSpec};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kvmos panel API",
        description = "The REST API of the kvmos admin panel. Authenticate with the session cookie (and X-CSRF-Token on changes) or with `Authorization: Bearer <API token>`."
    ),
    components(schemas(ApiError))
)]
struct ApiDoc;

/// The public routes, and the ones behind auth, with their OpenAPI document.
pub fn routes(state: State) -> (axum::Router<State>, utoipa::openapi::OpenApi) {
    let protected = OpenApiRouter::new()
        .routes(routes!(session, logout))
        .routes(routes!(host_overview))
        .routes(routes!(get_settings, put_settings))
        .routes(routes!(host_power))
        .routes(routes!(change_password))
        .routes(routes!(put_certificate))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(audit_log))
        .routes(routes!(list_vms, create_vm))
        .routes(routes!(get_vm, update_vm, delete_vm))
        .routes(routes!(vm_action))
        .routes(routes!(put_medium))
        .routes(routes!(vm_cloud_init))
        .routes(routes!(crate::console::console))
        .routes(routes!(crate::console::screen))
        .routes(routes!(vm_screenshot))
        .routes(routes!(vm_screen_text))
        .routes(routes!(crate::switch::list_screens))
        .routes(routes!(crate::switch::send_keys))
        .routes(routes!(crate::switch::get_settings, crate::switch::put_settings))
        .routes(routes!(crate::switch::switch_ws))
        .routes(routes!(list_images))
        .routes(routes!(create_disk))
        .routes(routes!(upload_image, delete_image))
        .routes(routes!(import_image))
        .routes(routes!(get_trusted_ca, put_trusted_ca))
        .routes(routes!(clone_image))
        .routes(routes!(grow_image))
        .routes(routes!(clone_vm))
        .routes(routes!(list_tasks))
        .routes(routes!(get_task, stop_task))
        .routes(routes!(openapi_json))
        .layer(axum::middleware::from_fn_with_state(state, require_auth));
    let public = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(setup_status, setup))
        .routes(routes!(login));
    public.merge(protected).split_for_parts()
}

/// Routes that need no session: liveness, first-boot setup and login.
#[cfg(test)]
pub const PUBLIC_PATHS: &[&str] = &["/api/v1/health", "/api/v1/setup", "/api/v1/login"];

pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == SESSION_COOKIE).then(|| v.to_string())
    })
}

/// Lets a request through with a live session (and, for changes, its CSRF
/// token) or an API token; answers 401 or 403 otherwise.
pub async fn require_auth(
    axum::extract::State(state): axum::extract::State<State>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let addr = client.ip();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let caller = if let Some(secret) = bearer {
        match state.auth.token_name(&secret) {
            Some(name) => Caller { who: format!("token:{name}"), addr, csrf: None },
            None => return ApiError::new(401, "the API token is not valid (revoked?)").into_response(),
        }
    } else {
        let Some(csrf) = session_cookie(req.headers()).and_then(|t| state.auth.session(&t)) else {
            return ApiError::new(401, "log in first (no session, or it expired)").into_response();
        };
        let changes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        if changes {
            let sent = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            if !auth::constant_time_eq(sent, &csrf) {
                return ApiError::new(403, "missing or wrong X-CSRF-Token header").into_response();
            }
        }
        Caller { who: "admin".into(), addr, csrf: Some(csrf) }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

fn set_session_cookie(token: &str) -> String {
    format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}", SESSION_MAX.as_secs())
}

/// Runs blocking work (argon2, process control) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)?
}

// ---- public ----

#[derive(Serialize, ToSchema)]
struct Health {
    status: &'static str,
    version: &'static str,
}

/// Liveness: the panel answers.
#[utoipa::path(get, path = "/api/v1/health", responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok", version: env!("CARGO_PKG_VERSION") })
}

#[derive(Serialize, ToSchema)]
struct SetupStatus {
    /// True until the admin password is set with the setup code.
    needed: bool,
}

#[utoipa::path(get, path = "/api/v1/setup", responses((status = 200, body = SetupStatus)))]
async fn setup_status(axum::extract::State(state): axum::extract::State<State>) -> Json<SetupStatus> {
    Json(SetupStatus { needed: !state.auth.is_set_up() })
}

#[derive(Deserialize, ToSchema)]
struct SetupRequest {
    /// The code shown on the server's console.
    code: String,
    password: String,
}

#[derive(Serialize, ToSchema)]
struct SessionInfo {
    who: String,
    /// Send this in X-CSRF-Token with every change.
    csrf: String,
}

fn auth_error(e: auth::AuthError) -> ApiError {
    use auth::AuthError::*;
    match e {
        BadPassword => ApiError::field(401, "password", e.to_string()),
        BadSetupCode => ApiError::field(401, "code", e.to_string()),
        WeakPassword => ApiError::field(400, "password", e.to_string()),
        Storage => ApiError::new(500, e.to_string()),
        AlreadySetUp | NotSetUp => ApiError::conflict(e.to_string()),
        RateLimited(_) => ApiError::new(429, e.to_string()),
    }
}

/// Audits a login or setup attempt. Of the attempts the rate limit
/// refuses, only the first per address and window is logged: a flood
/// cannot fill the data disk or the log.
fn audit_attempt<T>(state: &State, addr: SocketAddr, action: &str, target: &str, result: &Result<T, ApiError>) {
    if result.as_ref().is_err_and(|e| e.status == 429) && !state.auth.first_refusal(addr.ip()) {
        return;
    }
    let caller = Caller { who: "admin".into(), addr: addr.ip(), csrf: None };
    state.audit(&caller, action, target, result);
}

fn session_response(token: &str, csrf: String) -> Response {
    ([(header::SET_COOKIE, set_session_cookie(token))], Json(SessionInfo { who: "admin".into(), csrf })).into_response()
}

/// First boot: set the admin password with the one-time setup code.
#[utoipa::path(post, path = "/api/v1/setup", request_body = SetupRequest,
    responses((status = 200, body = SessionInfo), (status = 401, body = ApiError), (status = 409, body = ApiError), (status = 429, body = ApiError)))]
async fn setup(
    axum::extract::State(state): axum::extract::State<State>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<SetupRequest>,
) -> Response {
    let st = state.clone();
    // Wrong codes count as failed logins, so the code cannot be guessed.
    let result = blocking(move || {
        st.auth.check_rate(addr.ip()).map_err(auth_error)?;
        st.auth.setup(&req.code, &req.password).map_err(|e| {
            if e == auth::AuthError::BadSetupCode {
                st.auth.record_failure(addr.ip());
            }
            auth_error(e)
        })?;
        Ok(st.auth.new_session())
    })
    .await;
    audit_attempt(&state, addr, "setup", "admin password", &result);
    match result {
        Ok((token, csrf)) => session_response(&token, csrf),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize, ToSchema)]
struct LoginRequest {
    password: String,
}

/// Log in; the session cookie comes back with the CSRF token.
#[utoipa::path(post, path = "/api/v1/login", request_body = LoginRequest,
    responses((status = 200, body = SessionInfo), (status = 401, body = ApiError), (status = 429, body = ApiError)))]
async fn login(
    axum::extract::State(state): axum::extract::State<State>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Response {
    let st = state.clone();
    let result = blocking(move || st.auth.login(addr.ip(), &req.password).map_err(auth_error)).await;
    audit_attempt(&state, addr, "login", "admin", &result);
    match result {
        Ok((token, csrf)) => session_response(&token, csrf),
        Err(e) => e.into_response(),
    }
}

// ---- session ----

/// The current session and its CSRF token.
#[utoipa::path(get, path = "/api/v1/session", responses((status = 200, body = SessionInfo)))]
async fn session(Extension(caller): Extension<Caller>) -> Json<SessionInfo> {
    Json(SessionInfo { who: caller.who, csrf: caller.csrf.unwrap_or_default() })
}

#[utoipa::path(post, path = "/api/v1/session/logout", responses((status = 204)))]
async fn logout(axum::extract::State(state): axum::extract::State<State>, headers: HeaderMap) -> Response {
    if let Some(t) = session_cookie(&headers) {
        state.auth.logout(&t);
    }
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear)]).into_response()
}

// ---- host ----

/// CPU, memory, KVM, uptime, addresses, the data disk, and the version.
#[utoipa::path(get, path = "/api/v1/host", responses((status = 200, body = Overview)))]
async fn host_overview(axum::extract::State(state): axum::extract::State<State>) -> Json<Overview> {
    let p = &state.paths;
    Json(host::overview(
        &p.data_dir,
        &p.status_file,
        p.ram_only,
        state.supervisor.running_ids().len(),
        state.vms.list().len(),
    ))
}

#[utoipa::path(get, path = "/api/v1/host/settings", responses((status = 200, body = HostSettings)))]
async fn get_settings(axum::extract::State(state): axum::extract::State<State>) -> Json<HostSettings> {
    Json(HostSettings::load(&state.paths.data_dir))
}

/// Saves hostname, network and NTP; kvmos applies them at the next boot.
#[utoipa::path(put, path = "/api/v1/host/settings", request_body = HostSettings,
    responses((status = 200, body = HostSettings), (status = 400, body = ApiError)))]
async fn put_settings(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    ApiJson(s): ApiJson<HostSettings>,
) -> ApiResult<Json<HostSettings>> {
    let r = s.save(&state.paths.data_dir);
    state.audit(&caller, "host.settings", "host", &r);
    r.map(|_| Json(s))
}

#[derive(Deserialize, ToSchema)]
struct PowerRequest {
    action: PowerAction,
}

/// Reboot or shut down the appliance; running VMs are powered off first.
#[utoipa::path(post, path = "/api/v1/host/power", request_body = PowerRequest,
    responses((status = 202), (status = 409, body = ApiError)))]
async fn host_power(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<PowerRequest>,
) -> ApiResult<StatusCode> {
    let r = host::power(&state.paths.status_file, &state.launcher, req.action);
    state.audit(&caller, &format!("host.{:?}", req.action).to_lowercase(), "host", &r);
    r.map(|_| StatusCode::ACCEPTED)
}

#[derive(Deserialize, ToSchema)]
struct PasswordChange {
    current: String,
    new: String,
}

/// Changes the admin password; every session ends.
#[utoipa::path(put, path = "/api/v1/host/password", request_body = PasswordChange,
    responses((status = 204), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
async fn change_password(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<PasswordChange>,
) -> ApiResult<StatusCode> {
    let st = state.clone();
    let r = blocking(move || {
        if !st.auth.check_password(&req.current) {
            return Err(ApiError::field(401, "current", "current: the password is wrong"));
        }
        st.auth.set_password(&req.new).map_err(auth_error)?;
        st.auth.end_all_sessions();
        Ok(())
    })
    .await;
    state.audit(&caller, "host.password", "admin", &r);
    r.map(|_| StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
struct CertificateUpload {
    /// PEM certificate chain.
    cert_pem: String,
    /// PEM private key.
    key_pem: String,
}

/// Replaces the panel's TLS certificate; new connections use it at once.
#[utoipa::path(put, path = "/api/v1/host/certificate", request_body = CertificateUpload,
    responses((status = 204), (status = 400, body = ApiError)))]
async fn put_certificate(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CertificateUpload>,
) -> ApiResult<StatusCode> {
    let r = crate::tls::replace(&state.paths.data_dir, &state.tls, &req.cert_pem, &req.key_pem).await;
    state.audit(&caller, "host.certificate", "tls", &r);
    r.map(|_| StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/tokens", responses((status = 200, body = Vec<TokenInfo>)))]
async fn list_tokens(axum::extract::State(state): axum::extract::State<State>) -> Json<Vec<TokenInfo>> {
    Json(state.auth.tokens())
}

#[derive(Deserialize, ToSchema)]
struct NewToken {
    name: String,
}

#[derive(Serialize, ToSchema)]
struct CreatedToken {
    token: TokenInfo,
    /// Shown once; only its hash is kept.
    secret: String,
}

/// Makes an API token for scripts.
#[utoipa::path(post, path = "/api/v1/tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ApiError)))]
async fn create_token(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let name = req.name.trim();
    if name.is_empty() || name.len() > 64 {
        return Err(ApiError::bad("name", "name: give 1 to 64 characters"));
    }
    let r = state.auth.create_token(name).map_err(ApiError::from);
    state.audit(&caller, "token.create", name, &r);
    let (token, secret) = r?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn revoke_token(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let r = match state.auth.revoke_token(&id) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::not_found("token")),
        Err(e) => Err(e.into()),
    };
    state.audit(&caller, "token.revoke", &id, &r);
    r.map(|_| StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
struct AuditQuery {
    limit: Option<usize>,
}

/// Who did what, when and from where; newest first.
#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery),
    responses((status = 200, body = Vec<crate::audit::AuditEntry>)))]
async fn audit_log(
    axum::extract::State(state): axum::extract::State<State>,
    Query(q): Query<AuditQuery>,
) -> Json<Vec<crate::audit::AuditEntry>> {
    Json(state.audit.recent(q.limit.unwrap_or(200).min(5000)))
}

// ---- VMs ----

/// A VM as the API shows it: the definition, the live state, the runs.
#[derive(Serialize, ToSchema)]
pub struct VmView {
    id: String,
    name: String,
    state: VmState,
    spec: VmSpec,
    mac: String,
    created: u64,
    /// Newest last.
    runs: Vec<Run>,
    /// CPU and memory use from the running VMM's cgroup (absent when the
    /// VM is stopped, or the host has no cgroup v2).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<crate::supervisor::Usage>,
}

fn view(state: &State, r: VmRecord) -> VmView {
    let vm_state = state.supervisor.state(&r.id);
    let usage = state.supervisor.usage(&r.id);
    let skip = r.runs.len().saturating_sub(20);
    VmView {
        name: r.spec.name.clone(),
        id: r.id,
        state: vm_state,
        spec: r.spec,
        mac: r.mac,
        created: r.created,
        runs: r.runs.into_iter().skip(skip).collect(),
        usage,
    }
}

#[utoipa::path(get, path = "/api/v1/vms", responses((status = 200, body = Vec<VmView>)))]
async fn list_vms(axum::extract::State(state): axum::extract::State<State>) -> Json<Vec<VmView>> {
    Json(state.vms.list().into_iter().map(|r| view(&state, r)).collect())
}

/// Creates a VM. Disks with `size_mib` are made empty now.
#[utoipa::path(post, path = "/api/v1/vms", request_body = VmSpec,
    responses((status = 201, body = VmView), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn create_vm(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    ApiJson(spec): ApiJson<VmSpec>,
) -> ApiResult<(StatusCode, Json<VmView>)> {
    let name = spec.name.clone();
    let r = (|| {
        spec.validate(&state.images, HostCapacity::read())?;
        let mut made = Vec::new();
        for (i, d) in spec.disks.iter().enumerate() {
            if let Some(size) = d.size_mib {
                match state.images.create_disk(&d.image, size) {
                    Ok(_) => made.push(d.image.clone()),
                    Err(mut e) => {
                        made.iter().for_each(|m| drop(state.images.delete(m)));
                        if e.field.as_deref() == Some("name") {
                            e.field = Some(format!("disks[{i}].image"));
                        }
                        return Err(e);
                    }
                }
            }
        }
        let mut spec = spec.clone();
        spec.disks.iter_mut().for_each(|d| d.size_mib = None);
        state.vms.create(spec, now_unix()).inspect_err(|_| made.iter().for_each(|m| drop(state.images.delete(m))))
    })();
    state.audit(&caller, "vm.create", &name, &r);
    Ok((StatusCode::CREATED, Json(view(&state, r?))))
}

#[utoipa::path(get, path = "/api/v1/vms/{id}", params(("id" = String, Path)),
    responses((status = 200, body = VmView), (status = 404, body = ApiError)))]
async fn get_vm(
    axum::extract::State(state): axum::extract::State<State>,
    Path(id): Path<String>,
) -> ApiResult<Json<VmView>> {
    Ok(Json(view(&state, state.vms.get(&id)?)))
}

/// The screen of a running firmware-booted VM, as a PNG (for thumbnails).
#[utoipa::path(get, path = "/api/v1/vms/{id}/screenshot", params(("id" = String, Path)),
    responses((status = 200, content_type = "image/png", description = "The screen as the guest shows it"),
              (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn vm_screenshot(
    axum::extract::State(state): axum::extract::State<State>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    state.vms.get(&id)?;
    let s = state.clone();
    let png = tokio::task::spawn_blocking(move || s.supervisor.screenshot(&id))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(([(axum::http::header::CONTENT_TYPE, "image/png"), (axum::http::header::CACHE_CONTROL, "no-store")], png)
        .into_response())
}

/// The characters on a running firmware-booted VM's screen while it is in
/// a text mode (firmware menus, boot loaders, text consoles), row by row.
#[utoipa::path(get, path = "/api/v1/vms/{id}/screen/text", params(("id" = String, Path)),
    responses((status = 200, body = ScreenText), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn vm_screen_text(
    axum::extract::State(state): axum::extract::State<State>,
    Path(id): Path<String>,
) -> ApiResult<Json<ScreenText>> {
    state.vms.get(&id)?;
    let s = state.clone();
    let text = tokio::task::spawn_blocking(move || s.supervisor.screen_text(&id))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(text))
}

/// A text-mode screen.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScreenText {
    /// Always `text`.
    pub mode: String,
    /// One string per row; code page 437's box characters as Unicode.
    pub rows: Vec<String>,
}

/// Changes a stopped VM's definition.
#[utoipa::path(put, path = "/api/v1/vms/{id}", params(("id" = String, Path)), request_body = VmSpec,
    responses((status = 200, body = VmView), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn update_vm(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(spec): ApiJson<VmSpec>,
) -> ApiResult<Json<VmView>> {
    let old = state.vms.get(&id)?;
    let r = (|| {
        if state.supervisor.state(&id) != VmState::Stopped {
            return Err(ApiError::conflict(format!("{} is running; stop it before changing it", old.spec.name)));
        }
        if spec.disks.iter().any(|d| d.size_mib.is_some()) {
            return Err(ApiError::bad("disks", "disks: make new disks in Images, then add them here"));
        }
        spec.validate(&state.images, HostCapacity::read())?;
        state.vms.update_spec(&id, spec)
    })();
    state.audit(&caller, "vm.update", &old.spec.name, &r);
    Ok(Json(view(&state, r?)))
}

/// Deletes a stopped VM's definition (its disk images stay).
#[utoipa::path(delete, path = "/api/v1/vms/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete_vm(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let old = state.vms.get(&id)?;
    let r = if state.supervisor.state(&id) != VmState::Stopped {
        Err(ApiError::conflict(format!("{} is running; shut it down before deleting it", old.spec.name)))
    } else {
        state.vms.delete(&id)
    };
    state.audit(&caller, "vm.delete", &old.spec.name, &r);
    r.map(|_| StatusCode::NO_CONTENT)
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
enum VmAction {
    Start,
    /// ACPI power button; after `timeout_s` (default 60) a hard stop.
    Shutdown,
    ForceOff,
    Reboot,
    Pause,
    Resume,
}

#[derive(Deserialize, ToSchema)]
struct ActionRequest {
    action: VmAction,
    #[serde(default)]
    timeout_s: Option<u64>,
}

/// Start, shut down, force off, reboot, pause or resume a VM.
#[utoipa::path(post, path = "/api/v1/vms/{id}/actions", params(("id" = String, Path)), request_body = ActionRequest,
    responses((status = 200, body = VmView), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn vm_action(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ActionRequest>,
) -> ApiResult<Json<VmView>> {
    let record = state.vms.get(&id)?;
    let st = state.clone();
    let vm = id.clone();
    let r = blocking(move || {
        let sup = &st.supervisor;
        match req.action {
            VmAction::Start => sup.start(&st, &vm),
            VmAction::Shutdown => {
                sup.shutdown(&st, &vm, Duration::from_secs(req.timeout_s.unwrap_or(60).clamp(1, 3600)))
            }
            VmAction::ForceOff => sup.force_off(&vm),
            VmAction::Reboot => sup.reboot(&vm),
            VmAction::Pause => sup.pause(&vm),
            VmAction::Resume => sup.resume(&vm),
        }
    })
    .await;
    let action = format!("vm.{:?}", req.action).to_lowercase();
    state.audit(&caller, &action, &record.spec.name, &r);
    r?;
    Ok(Json(view(&state, state.vms.get(&id)?)))
}

/// What cloud-init gets from kvmos at the VM's next start: the NoCloud
/// seed's `meta-data`, `user-data` and `network-config`.
#[utoipa::path(get, path = "/api/v1/vms/{id}/cloud-init", params(("id" = String, Path)),
    responses((status = 200, body = crate::cloud_init::Seed), (status = 404, body = ApiError)))]
async fn vm_cloud_init(
    axum::extract::State(state): axum::extract::State<State>,
    Path(id): Path<String>,
) -> ApiResult<Json<crate::cloud_init::Seed>> {
    let r = state.vms.get(&id)?;
    let c = r.spec.cloud_init.as_ref().ok_or_else(|| {
        ApiError::new(404, format!("{} has no cloud-init settings; give cloud_init in its definition", r.spec.name))
    })?;
    Ok(Json(c.seed(&r.id, &r.spec.name, r.spec.network.then_some(r.mac.as_str()))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MediumRequest {
    /// An ISO image's name, or null to eject (required).
    #[serde(deserialize_with = "Option::deserialize")]
    image: Option<String>,
}

/// Puts an ISO in a VM's CD-ROM drive, or ejects the medium. Disk `index`
/// of the VM must be a CD-ROM drive (an ISO). A running guest sees the
/// change at once. The ISO put in stays in the VM's definition (it is in
/// the drive at the next start); an eject lasts until the VM stops: to
/// start without the ISO, take it out of the VM's disks.
#[utoipa::path(put, path = "/api/v1/vms/{id}/disks/{index}/medium",
    params(("id" = String, Path), ("index" = usize, Path)), request_body = MediumRequest,
    responses((status = 200, body = VmView), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn put_medium(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    Path((id, index)): Path<(String, usize)>,
    ApiJson(req): ApiJson<MediumRequest>,
) -> ApiResult<Json<VmView>> {
    let record = state.vms.get(&id)?;
    let st = state.clone();
    let vm = id.clone();
    let image = req.image.clone();
    let r = blocking(move || {
        let field = format!("disks[{index}]");
        let is_iso = |name: &str| st.images.get(name).is_some_and(|i| i.kind == ImageKind::Iso);
        let disk = record.spec.disks.get(index).ok_or_else(|| {
            ApiError::field(
                404,
                &field,
                format!("{field}: the VM has {} disk(s), numbered from 0", record.spec.disks.len()),
            )
        })?;
        if disk.size_mib.is_some() || !is_iso(&disk.image) {
            return Err(ApiError::bad(
                &field,
                format!("{field}: {} is a disk, not a CD-ROM drive (ISOs go in one)", disk.image),
            ));
        }
        if let Some(name) = image.as_deref().filter(|n| !is_iso(n)) {
            return Err(ApiError::bad(
                "image",
                format!("image: {name} is not an uploaded ISO; upload it in Images first"),
            ));
        }
        let running = st.supervisor.state(&vm) != VmState::Stopped;
        match (&image, running) {
            (None, false) => {
                return Err(ApiError::conflict(format!(
                    "{} is off: to start it without {}, take the ISO out of its disks",
                    record.spec.name, disk.image
                )))
            }
            (None, true) => st.supervisor.change_medium(&vm, index, None)?,
            (Some(name), true) => {
                let file = std::fs::File::open(st.images.path(name)).map_err(ApiError::internal)?;
                st.supervisor.change_medium(&vm, index, Some((name, &file)))?;
            }
            (Some(_), false) => {}
        }
        if let Some(name) = image {
            st.vms.modify(&vm, |r| r.spec.disks[index].image = name)?;
        }
        Ok(())
    })
    .await;
    let what = req.image.as_deref().map_or_else(|| "eject".to_string(), |n| format!("insert {n}"));
    state.audit(&caller, "vm.medium", &format!("{} ({what})", state.vms.get(&id)?.spec.name), &r);
    r?;
    Ok(Json(view(&state, state.vms.get(&id)?)))
}

// ---- images ----

#[derive(Serialize, ToSchema)]
struct ImageList {
    images: Vec<Image>,
    /// Guests bundled with kvmos (the demo guest).
    guests: Vec<BundledGuest>,
    /// The largest upload accepted, in bytes.
    max_upload: u64,
}

#[utoipa::path(get, path = "/api/v1/images", responses((status = 200, body = ImageList)))]
async fn list_images(axum::extract::State(state): axum::extract::State<State>) -> Json<ImageList> {
    Json(ImageList { images: state.images.list(), guests: state.images.guests(), max_upload: state.images.max_upload })
}

#[derive(Deserialize, ToSchema)]
struct NewDisk {
    name: String,
    size_mib: u64,
}

/// Makes an empty raw disk image.
#[utoipa::path(post, path = "/api/v1/images/disks", request_body = NewDisk,
    responses((status = 201, body = Image), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn create_disk(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<NewDisk>,
) -> ApiResult<(StatusCode, Json<Image>)> {
    let r = state.images.create_disk(&req.name, req.size_mib);
    state.audit(&caller, "image.create-disk", &req.name, &r);
    Ok((StatusCode::CREATED, Json(r?)))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct UploadQuery {
    /// kernel, initrd, disk or iso.
    kind: String,
}

/// Uploads an image: the request body is the file, streamed to disk.
#[utoipa::path(put, path = "/api/v1/images/{name}", params(("name" = String, Path), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Image), (status = 400, body = ApiError), (status = 409, body = ApiError), (status = 413, body = ApiError)))]
async fn upload_image(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Image>)> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let r = match q.kind.parse::<ImageKind>() {
        Ok(kind) => state.images.upload(&name, kind, declared, body.into_data_stream()).await,
        Err(e) => Err(e),
    };
    state.audit(&caller, "image.upload", &name, &r);
    Ok((StatusCode::CREATED, Json(r?)))
}

/// Deletes an image no VM uses.
#[utoipa::path(delete, path = "/api/v1/images/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete_image(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let users = state.vms.users_of(&name);
    let r = if users.is_empty() {
        state.images.delete(&name)
    } else {
        Err(ApiError::conflict(format!("{name} is used by {}; remove it from them first", users.join(", "))))
    };
    state.audit(&caller, "image.delete", &name, &r);
    r.map(|_| StatusCode::NO_CONTENT)
}

/// Refuses a change to image `name` while a running VM uses it.
fn refuse_if_running(state: &State, name: &str) -> ApiResult<()> {
    let users = state.vms.users_of(name);
    let running: Vec<String> = state
        .vms
        .list()
        .into_iter()
        .filter(|r| users.contains(&r.spec.name) && state.supervisor.state(&r.id) != VmState::Stopped)
        .map(|r| r.spec.name)
        .collect();
    if running.is_empty() {
        Ok(())
    } else {
        Err(ApiError::conflict(format!("{name} is in use by {}, which runs; stop it first", running.join(", "))))
    }
}

/// The certificate authorities downloads trust beside Mozilla's.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TrustedCa {
    /// PEM certificates (a company's CA, for its own mirror); empty for none.
    pem: String,
    /// How many certificates that is (ignored in a PUT).
    #[serde(default)]
    count: usize,
}

#[utoipa::path(get, path = "/api/v1/settings/trusted-ca", responses((status = 200, body = TrustedCa)))]
async fn get_trusted_ca(axum::extract::State(state): axum::extract::State<State>) -> Json<TrustedCa> {
    let pem = state.images.trusted_ca();
    let count = crate::download::parse_trusted_ca(&pem).map(|c| c.len()).unwrap_or(0);
    Json(TrustedCa { pem, count })
}

/// Replaces the certificate authorities downloads trust beside Mozilla's
/// roots (for an HTTPS mirror whose certificate a company CA signed);
/// every certificate is checked first. The next download trusts them.
#[utoipa::path(put, path = "/api/v1/settings/trusted-ca", request_body = TrustedCa,
    responses((status = 200, body = TrustedCa), (status = 400, body = ApiError)))]
async fn put_trusted_ca(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<TrustedCa>,
) -> ApiResult<Json<TrustedCa>> {
    let r = state.images.set_trusted_ca(&req.pem);
    let what = format!("{} certificate(s)", r.as_ref().copied().unwrap_or(0));
    state.audit(&caller, "settings.trusted-ca", &what, &r);
    let count = r?;
    Ok(Json(TrustedCa { pem: state.images.trusted_ca(), count }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ImportRequest {
    /// The new image's name.
    name: String,
    /// Where to download it from: `https://…`, or `http://…` with a
    /// checksum. Servers that take range requests resume broken downloads.
    url: String,
    /// kernel, initrd, disk or iso; when absent, the file's content says
    /// (qcow2, ISO 9660, a partition table, a kernel).
    #[serde(default)]
    kind: Option<ImageKind>,
    /// The file's SHA-256 or SHA-512 in hex, optionally as `sha256:…` or
    /// `sha512:…`; a file that does not match is not kept.
    #[serde(default)]
    checksum: Option<String>,
}

/// Downloads an image from a URL, in the background (a task with progress
/// and a log): limited to the upload limit and the free space, resumed
/// where the server allows it, checked against the checksum given, and
/// recognised and converted (qcow2) like an upload. A failed download
/// leaves nothing behind.
#[utoipa::path(post, path = "/api/v1/images/import", request_body = ImportRequest,
    responses((status = 202, body = TaskView), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn import_image(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ImportRequest>,
) -> ApiResult<(StatusCode, Json<TaskView>)> {
    let r = (|| {
        let checksum = req.checksum.as_deref().filter(|c| !c.trim().is_empty()).map(Checksum::parse).transpose()?;
        let url = crate::download::check_url(&req.url, checksum.as_ref())?;
        let reservation = state.images.check_new(&req.name, 0)?;
        let task = state.images.tasks.start("download", &req.name);
        task.log(format!("from {url}"));
        let (st, t, kind) = (state.clone(), task.clone(), req.kind);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = st.images.import(reservation, kind, url, checksum, &t).await;
            if let Ok(image) = &r {
                t.log(format!(
                    "{} is ready ({} MiB) after {:.1} s",
                    image.name,
                    image.size >> 20,
                    started.elapsed().as_secs_f64()
                ));
            }
            t.finish(&r);
        });
        Ok(task.view())
    })();
    state.audit(&caller, "image.import", &format!("{} ← {}", req.name, req.url), &r);
    Ok((StatusCode::ACCEPTED, Json(r?)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CloneRequest {
    /// The new image's or VM's name.
    name: String,
}

/// Copies a disk image to a new one, in the background (a task): only its
/// data is copied, so the copy is as sparse as the disk. The disk must not
/// be in use by a running VM.
#[utoipa::path(post, path = "/api/v1/images/{name}/clone", params(("name" = String, Path)), request_body = CloneRequest,
    responses((status = 202, body = TaskView), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 507, body = ApiError)))]
async fn clone_image(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<CloneRequest>,
) -> ApiResult<(StatusCode, Json<TaskView>)> {
    let r = (|| {
        refuse_if_running(&state, &name)?;
        let (source, bytes, reservation) = state.images.prepare_clone(&name, &req.name)?;
        state.images.check_room(bytes)?;
        let task = state.images.tasks.start("clone", &req.name);
        task.log(format!("copy of {name} ({} MiB, {} MiB of data)", source.size >> 20, bytes >> 20));
        task.progress(0, bytes);
        let (st, t, to) = (state.clone(), task.clone(), req.name.clone());
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let r = st.images.copy_disk(source, &to, |done| {
                t.progress(done, bytes);
                !t.stopping()
            });
            drop(reservation);
            if r.is_ok() {
                t.log(format!("done in {:.1} s", started.elapsed().as_secs_f64()));
            }
            t.finish(&r);
        });
        Ok(task.view())
    })();
    state.audit(&caller, "image.clone", &format!("{name} → {}", req.name), &r);
    Ok((StatusCode::ACCEPTED, Json(r?)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct GrowRequest {
    /// The disk's new size, larger than now.
    size_mib: u64,
}

/// Grows a disk image (never shrinks it). No running VM may use it; the
/// guest sees the larger disk at its next start and grows its partitions
/// and file systems itself (cloud-init does it at boot).
#[utoipa::path(post, path = "/api/v1/images/{name}/grow", params(("name" = String, Path)), request_body = GrowRequest,
    responses((status = 200, body = Image), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn grow_image(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<GrowRequest>,
) -> ApiResult<Json<Image>> {
    let r = (|| {
        refuse_if_running(&state, &name)?;
        state.images.grow_disk(&name, req.size_mib)
    })();
    state.audit(&caller, "image.grow", &format!("{name} to {} MiB", req.size_mib), &r);
    Ok(Json(r?))
}

/// Clones a stopped VM: a new VM with the same settings, a new MAC, and a
/// copy of each of its writable disks (`NAME-disk`, `NAME-disk1`, ...);
/// ISOs and read-only disks are shared. In the background (a task); the
/// new VM appears when its disks are copied, with autostart off.
#[utoipa::path(post, path = "/api/v1/vms/{id}/clone", params(("id" = String, Path)), request_body = CloneRequest,
    responses((status = 202, body = TaskView), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 507, body = ApiError)))]
async fn clone_vm(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CloneRequest>,
) -> ApiResult<(StatusCode, Json<TaskView>)> {
    let record = state.vms.get(&id)?;
    let r = (|| {
        if state.supervisor.state(&id) != VmState::Stopped {
            return Err(ApiError::conflict(format!("{} is running; shut it down before cloning it", record.spec.name)));
        }
        check_name("name", &req.name, 32)?;
        if state.vms.list().iter().any(|r| r.spec.name == req.name) {
            return Err(ApiError::field(409, "name", format!("name: a VM called {} already exists", req.name)));
        }
        // The disks to copy, and their new names.
        let mut spec = record.spec.clone();
        spec.name = req.name.clone();
        spec.autostart = false;
        let mut copies = Vec::new();
        for (i, d) in spec.disks.iter_mut().enumerate() {
            let is_disk = state.images.get(&d.image).is_some_and(|img| img.kind == ImageKind::Disk);
            if d.read_only || !is_disk {
                continue;
            }
            let to = if i == 0 { format!("{}-disk", req.name) } else { format!("{}-disk{i}", req.name) };
            let (source, bytes, reservation) = state.images.prepare_clone(&d.image, &to)?;
            copies.push((source, to.clone(), bytes, reservation));
            d.image = to;
        }
        let total: u64 = copies.iter().map(|c| c.2).sum();
        state.images.check_room(total)?;
        let task = state.images.tasks.start("clone", &req.name);
        task.log(format!(
            "clone of VM {} with {} disk(s), {} MiB of data",
            record.spec.name,
            copies.len(),
            total >> 20
        ));
        task.progress(0, total);
        let (st, t) = (state.clone(), task.clone());
        tokio::task::spawn_blocking(move || {
            let mut made: Vec<String> = Vec::new();
            let r = (|| {
                let mut before = 0;
                for (source, to, bytes, _reservation) in copies {
                    t.log(format!("copying {} to {to}", source.name));
                    st.images.copy_disk(source, &to, |done| {
                        t.progress(before + done, total);
                        !t.stopping()
                    })?;
                    made.push(to);
                    before += bytes;
                }
                spec.validate(&st.images, HostCapacity::read())?;
                let vm = st.vms.create(spec, now_unix())?;
                t.log(format!("VM {} created", vm.spec.name));
                Ok(vm)
            })();
            if r.is_err() {
                made.iter().for_each(|m| drop(st.images.delete(m)));
            }
            t.finish(&r);
        });
        Ok(task.view())
    })();
    state.audit(&caller, "vm.clone", &format!("{} → {}", record.spec.name, req.name), &r);
    Ok((StatusCode::ACCEPTED, Json(r?)))
}

/// The long tasks (conversions, clones), newest first, with their
/// progress, log and result; finished ones stay listed for a while.
#[utoipa::path(get, path = "/api/v1/tasks", responses((status = 200, body = Vec<TaskView>)))]
async fn list_tasks(axum::extract::State(state): axum::extract::State<State>) -> Json<Vec<TaskView>> {
    Json(state.images.tasks.list())
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}", params(("id" = String, Path)),
    responses((status = 200, body = TaskView), (status = 404, body = ApiError)))]
async fn get_task(
    axum::extract::State(state): axum::extract::State<State>,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskView>> {
    state.images.tasks.get(&id).map(Json).ok_or_else(|| ApiError::not_found("task"))
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", responses((status = 200, description = "the OpenAPI document")))]
async fn openapi_json(Extension(doc): Extension<std::sync::Arc<utoipa::openapi::OpenApi>>) -> Response {
    Json(doc.as_ref().clone()).into_response()
}

/// Stops a running download or clone: it ends failed at its next block,
/// and what it had written is removed.
#[utoipa::path(delete, path = "/api/v1/tasks/{id}", params(("id" = String, Path)),
    responses((status = 202, body = TaskView), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn stop_task(
    axum::extract::State(state): axum::extract::State<State>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<TaskView>)> {
    let r = state.images.tasks.stop(&id);
    let target = r.as_ref().map(|t| format!("{} {}", t.kind, t.target)).unwrap_or_else(|_| id.clone());
    state.audit(&caller, "task.stop", &target, &r);
    Ok((StatusCode::ACCEPTED, Json(r?)))
}
