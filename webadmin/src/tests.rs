//! API tests against the real router (in process, no network): auth on
//! every route of the OpenAPI document, setup-code single use, CSRF, the
//! login rate limit, validation errors by field, images, tokens, the audit
//! log, host settings and power.

use crate::app::State;
use crate::Args;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceExt;

pub const PASSWORD: &str = "correct horse battery";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub state: State,
    router: Router,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
    pub bearer: Option<String>,
    addr: SocketAddr,
}

pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub headers: axum::http::HeaderMap,
}

impl Harness {
    pub async fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        kvmos_vmm::tiny_guest::bundle(&d.join("guests")).unwrap();
        let args = Args {
            data_dir: d.join("data"),
            listen: "127.0.0.1:0".parse().unwrap(),
            redirect_from: "none".into(),
            status_file: d.join("status.json"),
            setup_code_file: d.join("setup-code"),
            run_dir: d.join("run"),
            vm_uids: crate::supervisor::VM_UID_BASE,
            guests_dir: d.join("guests"),
            vmm: Some(d.join("no-vmm-in-these-tests")),
            bridge: "kvmos-test-no-bridge".into(),
            max_upload_mib: 1,
            ram_only: false,
            user: None,
        };
        // The local HTTPS server the download tests fetch from.
        crate::test_https::trust(&args.data_dir);
        let tls = crate::tls::load_or_create(&args.data_dir, &args.status_file).await.unwrap();
        let launcher = Arc::new(crate::privsep::Launcher::in_thread(crate::privsep::Scope {
            run_dir: args.run_dir.clone(),
            vmm_bin: args.vmm.clone().unwrap(),
            cgroup_slice: d.join("cgroups"),
            panel_uid: 0,
        }));
        let state = Arc::new(crate::load_state(&args, tls, launcher).unwrap());
        let addr: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let router = crate::server::router(state.clone()).layer(MockConnectInfo(addr));
        Self { dir, state, router, cookie: None, csrf: None, bearer: None, addr }
    }

    pub fn from(mut self, ip: &str) -> Self {
        self.addr = format!("{ip}:5555").parse().unwrap();
        self.router = crate::server::router(self.state.clone()).layer(MockConnectInfo(self.addr));
        self
    }

    pub async fn raw(&self, req: Request<Body>) -> Answer {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        Answer { status, body, headers }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let b = self.request(method, path);
        let req = match body {
            Some(v) => b.header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        };
        self.raw(req.unwrap()).await
    }

    /// A request with this client's session or token, to give a body.
    pub fn request(&self, method: Method, path: &str) -> axum::http::request::Builder {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(c) = &self.cookie {
            b = b.header(header::COOKIE, format!("kvmos_session={c}"));
        }
        if let Some(c) = &self.csrf {
            b = b.header("x-csrf-token", c);
        }
        if let Some(t) = &self.bearer {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b
    }

    /// Takes the session from a login or setup answer.
    fn keep_session(&mut self, a: &Answer) {
        let cookie = a.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("Secure") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        self.cookie = Some(cookie.split(';').next().unwrap().trim_start_matches("kvmos_session=").to_string());
        self.csrf = Some(a.body["csrf"].as_str().unwrap().to_string());
    }

    /// First-boot setup with the code, which logs in.
    pub async fn set_up(&mut self) {
        let code = std::fs::read_to_string(self.dir.path().join("setup-code")).unwrap();
        let a =
            self.call(Method::POST, "/api/v1/setup", Some(json!({"code": code.trim(), "password": PASSWORD}))).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        self.keep_session(&a);
    }

    pub async fn login(&mut self, password: &str) -> Answer {
        let a = self.call(Method::POST, "/api/v1/login", Some(json!({"password": password}))).await;
        if a.status == StatusCode::OK {
            self.keep_session(&a);
        }
        a
    }
}

fn openapi_routes(doc: &Value) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "abcd1234").replace("{name}", "disk.img");
            out.push((m.to_uppercase().parse().unwrap(), concrete));
        }
    }
    out
}

#[tokio::test]
async fn every_route_but_setup_login_and_health_requires_auth() {
    let mut h = Harness::new().await;
    h.set_up().await;
    let doc = h.call(Method::GET, "/api/v1/openapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK);
    let routes = openapi_routes(&doc.body);
    assert!(routes.len() >= 20, "the document lists the routes: {routes:?}");
    let session = (h.cookie.take(), h.csrf.take());
    for (method, path) in &routes {
        let public = crate::api::PUBLIC_PATHS.contains(&path.as_str());
        let a = h.call(method.clone(), path, Some(json!({}))).await;
        if public {
            assert_ne!(a.status, StatusCode::UNAUTHORIZED, "{method} {path} is public");
        } else {
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {path} without a session: {:?}", a.body);
        }
    }
    // With a session but without the CSRF token, no change gets through.
    h.cookie = session.0.clone();
    for (method, path) in routes.iter().filter(|(m, _)| *m != Method::GET) {
        if crate::api::PUBLIC_PATHS.contains(&path.as_str()) {
            continue;
        }
        let a = h.call(method.clone(), path, Some(json!({}))).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{method} {path} without X-CSRF-Token");
    }
    h.csrf = session.1;
    assert_eq!(h.call(Method::GET, "/api/v1/vms", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_setup_code_works_once() {
    let mut h = Harness::new().await;
    assert_eq!(h.call(Method::GET, "/api/v1/setup", None).await.body["needed"], true);
    assert_eq!(h.login(PASSWORD).await.status, StatusCode::CONFLICT, "no password yet: set up first");
    let wrong = h.call(Method::POST, "/api/v1/setup", Some(json!({"code": "12345-67890", "password": PASSWORD}))).await;
    assert_eq!((wrong.status, wrong.body["field"].as_str()), (StatusCode::UNAUTHORIZED, Some("code")));
    let code = std::fs::read_to_string(h.dir.path().join("setup-code")).unwrap();
    let weak = h.call(Method::POST, "/api/v1/setup", Some(json!({"code": code.trim(), "password": "short"}))).await;
    assert_eq!(weak.body["field"], "password");
    h.set_up().await;
    assert!(!h.dir.path().join("setup-code").exists(), "the code is gone from the console");
    let again =
        h.call(Method::POST, "/api/v1/setup", Some(json!({"code": code.trim(), "password": "another password"}))).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(h.call(Method::GET, "/api/v1/setup", None).await.body["needed"], false);
    assert_eq!(h.call(Method::GET, "/api/v1/session", None).await.status, StatusCode::OK, "setup logs in");
}

#[tokio::test]
async fn logins_are_rate_limited_per_address() {
    let mut h = Harness::new().await;
    h.set_up().await;
    let mut h = h.from("198.51.100.9");
    h.cookie = None;
    for _ in 0..crate::auth::LOGIN_ATTEMPTS {
        assert_eq!(h.login("wrong password!").await.status, StatusCode::UNAUTHORIZED);
    }
    let limited = h.login(PASSWORD).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "even the right password waits: {:?}", limited.body);
    // Another address is not affected.
    let mut other = h.from("198.51.100.10");
    assert_eq!(other.login(PASSWORD).await.status, StatusCode::OK);
    let audit = other.call(Method::GET, "/api/v1/audit", None).await;
    let failed =
        audit.body.as_array().unwrap().iter().filter(|e| e["action"] == "login" && e["outcome"] != "ok").count();
    assert!(failed >= crate::auth::LOGIN_ATTEMPTS, "failed logins are audited");
}

#[tokio::test]
async fn logout_ends_the_session() {
    let mut h = Harness::new().await;
    h.set_up().await;
    assert_eq!(h.call(Method::POST, "/api/v1/session/logout", None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(h.call(Method::GET, "/api/v1/vms", None).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn vm_definitions_are_validated_field_by_field_and_persist() {
    let mut h = Harness::new().await;
    h.set_up().await;
    let spec = json!({"name": "web1", "vcpus": 1, "memory_mib": 32, "boot": {"type": "guest", "guest": "tiny"}});
    let cases = [
        (json!({"name": "Web 1"}), "name"),
        (json!({"vcpus": 999}), "vcpus"),
        (json!({"memory_mib": 1u64 << 40}), "memory_mib"),
        (json!({"boot": {"type": "guest", "guest": "nope"}}), "boot.guest"),
        (json!({"boot": {"type": "kernel", "kernel": "missing"}}), "boot.kernel"),
        (json!({"disks": [{"image": "missing.img"}]}), "disks[0].image"),
    ];
    for (patch, field) in cases {
        let mut s = spec.clone();
        for (k, v) in patch.as_object().unwrap() {
            s[k] = v.clone();
        }
        let a = h.call(Method::POST, "/api/v1/vms", Some(s)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{field}: {:?}", a.body);
        assert_eq!(a.body["field"], field, "{:?}", a.body);
        assert!(a.body["error"].as_str().unwrap().starts_with(field), "{:?}", a.body);
    }
    let unknown = h.call(Method::POST, "/api/v1/vms", Some(json!({"name": "x", "vcpu": 1}))).await;
    assert!(unknown.status.is_client_error());

    let mut with_disk = spec.clone();
    with_disk["disks"] = json!([{"image": "web1-disk", "size_mib": 64}]);
    let created = h.call(Method::POST, "/api/v1/vms", Some(with_disk)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(created.body["state"], "stopped");
    let dup = h.call(Method::POST, "/api/v1/vms", Some(spec.clone())).await;
    assert_eq!((dup.status, dup.body["field"].as_str()), (StatusCode::CONFLICT, Some("name")));

    // The new disk is an image now, and in use.
    let images = h.call(Method::GET, "/api/v1/images", None).await;
    assert_eq!(images.body["images"][0]["name"], "web1-disk");
    assert_eq!(images.body["images"][0]["size"], 64 << 20);
    assert_eq!(images.body["guests"][0]["name"], "tiny", "the bundled guest is always listed");
    let in_use = h.call(Method::DELETE, "/api/v1/images/web1-disk", None).await;
    assert_eq!(in_use.status, StatusCode::CONFLICT);
    assert!(in_use.body["error"].as_str().unwrap().contains("web1"));

    let mut updated = spec.clone();
    updated["autostart"] = json!(true);
    updated["disks"] = json!([{"image": "web1-disk"}]);
    let u = h.call(Method::PUT, &format!("/api/v1/vms/{id}"), Some(updated)).await;
    assert_eq!(u.status, StatusCode::OK, "{:?}", u.body);

    // A NIC needs the bridge; this test host has none.
    let mut with_net = spec.clone();
    with_net["network"] = json!(true);
    with_net["autostart"] = json!(true);
    with_net["disks"] = json!([{"image": "web1-disk"}]);
    assert_eq!(h.call(Method::PUT, &format!("/api/v1/vms/{id}"), Some(with_net)).await.status, StatusCode::OK);
    let start = h.call(Method::POST, &format!("/api/v1/vms/{id}/actions"), Some(json!({"action": "start"}))).await;
    assert_eq!(
        (start.status, start.body["field"].as_str()),
        (StatusCode::CONFLICT, Some("network")),
        "{:?}",
        start.body
    );

    // A new panel process sees the same definitions.
    let again = crate::vms::VmStore::load(&h.dir.path().join("data")).unwrap();
    let vm = again.get(&id).unwrap();
    assert!(vm.spec.autostart && vm.spec.network);

    assert_eq!(h.call(Method::DELETE, &format!("/api/v1/vms/{id}"), None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(h.call(Method::GET, &format!("/api/v1/vms/{id}"), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(h.call(Method::DELETE, "/api/v1/images/web1-disk", None).await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn uploads_stream_to_images_with_a_hash_and_limits() {
    let mut h = Harness::new().await;
    h.set_up().await;
    let upload = |name: &str, kind: &str, data: Vec<u8>| {
        Request::builder()
            .method(Method::PUT)
            .uri(format!("/api/v1/images/{name}?kind={kind}"))
            .header(header::COOKIE, format!("kvmos_session={}", h.cookie.clone().unwrap()))
            .header("x-csrf-token", h.csrf.clone().unwrap())
            .body(Body::from(data))
            .unwrap()
    };
    let a = h.raw(upload("hello.img", "disk", b"hello world".to_vec())).await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    assert_eq!(a.body["sha256"], "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
    // The limit in these tests is 1 MiB.
    let big = h.raw(upload("big.img", "disk", vec![0u8; 2 << 20])).await;
    assert_eq!((big.status, big.body["field"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("file")));
    let bad = h.raw(upload("vmlinuz", "kernel", b"text".to_vec())).await;
    assert_eq!(bad.body["field"], "file");
    let kind = h.raw(upload("x.img", "floppy", b"x".to_vec())).await;
    assert_eq!(kind.body["field"], "kind");
    let list = h.call(Method::GET, "/api/v1/images", None).await;
    let names: Vec<&str> =
        list.body["images"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["hello.img"], "failed uploads never appear");
    let disk = h.call(Method::POST, "/api/v1/images/disks", Some(json!({"name": "empty", "size_mib": 0}))).await;
    assert_eq!(disk.body["field"], "size_mib");
}

#[tokio::test]
async fn api_tokens_work_until_revoked_and_everything_is_audited() {
    let mut h = Harness::new().await;
    h.set_up().await;
    let t = h.call(Method::POST, "/api/v1/tokens", Some(json!({"name": "backup"}))).await;
    assert_eq!(t.status, StatusCode::CREATED);
    let secret = t.body["secret"].as_str().unwrap().to_string();
    let id = t.body["token"]["id"].as_str().unwrap().to_string();
    let session = (h.cookie.take(), h.csrf.take());
    h.bearer = Some(secret.clone());
    assert_eq!(h.call(Method::GET, "/api/v1/host", None).await.status, StatusCode::OK);
    let d = h.call(Method::POST, "/api/v1/images/disks", Some(json!({"name": "by-token", "size_mib": 1}))).await;
    assert_eq!(d.status, StatusCode::CREATED, "a token needs no CSRF token");
    h.bearer = None;
    (h.cookie, h.csrf) = session;
    assert_eq!(h.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None).await.status, StatusCode::NO_CONTENT);
    h.bearer = Some(secret);
    let (c, x) = (h.cookie.take(), h.csrf.take());
    assert_eq!(h.call(Method::GET, "/api/v1/host", None).await.status, StatusCode::UNAUTHORIZED);
    h.bearer = None;
    (h.cookie, h.csrf) = (c, x);
    let audit = h.call(Method::GET, "/api/v1/audit", None).await;
    let entries = audit.body.as_array().unwrap();
    let by_token = entries.iter().find(|e| e["action"] == "image.create-disk").unwrap();
    assert_eq!(by_token["who"], "token:backup");
    assert_eq!(by_token["from"], "192.0.2.7");
    assert!(entries.iter().any(|e| e["action"] == "token.revoke"));
    assert!(entries.iter().any(|e| e["action"] == "setup"));
}

#[tokio::test]
async fn host_overview_settings_and_power() {
    let mut h = Harness::new().await;
    h.set_up().await;
    let o = h.call(Method::GET, "/api/v1/host", None).await;
    assert!(o.body["cpus"].as_u64().unwrap() >= 1);
    assert!(o.body["memory_total_bytes"].as_u64().unwrap() > 0);
    assert!(o.body["kvm_available"].is_boolean());
    assert_eq!(o.body["data_disk"]["mounted"], true);
    let bad = h
        .call(Method::PUT, "/api/v1/host/settings", Some(json!({"hostname": "kvm-01", "network": {"mode": "static", "address": "10.0.0.5", "prefix": 40, "gateway": "10.0.0.1", "dns": null}, "ntp": null})))
        .await;
    assert_eq!(bad.body["field"], "network.prefix");
    let ok = h
        .call(
            Method::PUT,
            "/api/v1/host/settings",
            Some(json!({"hostname": "kvm-01", "network": {"mode": "dhcp"}, "ntp": "192.0.2.123"})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let saved = std::fs::read_to_string(h.dir.path().join("data/config/host.json")).unwrap();
    assert!(saved.contains("\"net\": \"dhcp\"") && saved.contains("kvm-01"), "{saved}");
    // Not on kvmos (no init status file): power control says so.
    let p = h.call(Method::POST, "/api/v1/host/power", Some(json!({"action": "reboot"}))).await;
    assert_eq!(p.status, StatusCode::CONFLICT);
    // Password change: the wrong current password is named; sessions end.
    let wrong = h
        .call(Method::PUT, "/api/v1/host/password", Some(json!({"current": "nope", "new": "a new long password"})))
        .await;
    assert_eq!(wrong.body["field"], "current");
    let changed = h
        .call(Method::PUT, "/api/v1/host/password", Some(json!({"current": PASSWORD, "new": "a new long password"})))
        .await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT);
    assert_eq!(h.call(Method::GET, "/api/v1/host", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.login("a new long password").await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_ui_is_served_with_xterm_and_strict_headers() {
    let h = Harness::new().await;
    let page = h.raw(Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.as_str().unwrap().contains("/assets/app.js"));
    assert!(page.headers.get("content-security-policy").is_some());
    let xterm = h.raw(Request::get("/assets/vendor/xterm.js").body(Body::empty()).unwrap()).await;
    assert_eq!(xterm.status, StatusCode::OK);
    assert!(xterm.headers[header::CONTENT_TYPE].to_str().unwrap().contains("javascript"));
    // noVNC's ES modules, and what they import, for the Screen view.
    for js in [
        "/assets/screen.js",
        "/assets/switch.js",
        "/assets/vendor/novnc/core/rfb.js",
        "/assets/vendor/novnc/core/input/xtscancodes.js",
        "/assets/vendor/novnc/vendor/pako/lib/zlib/inflate.js",
    ] {
        let r = h.raw(Request::get(js).body(Body::empty()).unwrap()).await;
        assert_eq!(r.status, StatusCode::OK, "{js}");
        assert!(r.headers[header::CONTENT_TYPE].to_str().unwrap().contains("javascript"), "{js}");
    }
}

#[tokio::test]
async fn screenshots_need_a_running_vm() {
    let mut h = Harness::new().await;
    h.set_up().await;
    let spec = json!({"name": "shot1", "vcpus": 1, "memory_mib": 32, "boot": {"type": "guest", "guest": "tiny"}});
    let vm = h.call(Method::POST, "/api/v1/vms", Some(spec)).await;
    let id = vm.body["id"].as_str().unwrap().to_string();
    let shot = h.call(Method::GET, &format!("/api/v1/vms/{id}/screenshot"), None).await;
    assert_eq!(shot.status, StatusCode::CONFLICT);
    assert!(shot.body["error"].as_str().unwrap().contains("not running"), "{:?}", shot.body);
    let none = h.call(Method::GET, "/api/v1/vms/nope/screenshot", None).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_admin_can_install_their_own_certificate() {
    let mut h = Harness::new().await;
    h.set_up().await;
    let mine = rcgen::generate_simple_self_signed(vec!["kvm.example.net".into()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["other.example.net".into()]).unwrap();
    let put = |cert: String, key: String| json!({"cert_pem": cert, "key_pem": key});
    let garbage = h.call(Method::PUT, "/api/v1/host/certificate", Some(put("hello".into(), "x".into()))).await;
    assert_eq!(garbage.body["field"], "cert_pem");
    let mismatched = h
        .call(Method::PUT, "/api/v1/host/certificate", Some(put(mine.cert.pem(), other.signing_key.serialize_pem())))
        .await;
    assert_eq!((mismatched.status, mismatched.body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("key_pem")));
    let ok = h
        .call(Method::PUT, "/api/v1/host/certificate", Some(put(mine.cert.pem(), mine.signing_key.serialize_pem())))
        .await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{:?}", ok.body);
    let on_disk = std::fs::read_to_string(h.dir.path().join("data/tls/cert.pem")).unwrap();
    assert_eq!(on_disk, mine.cert.pem());
    assert!(!h.dir.path().join("data/tls/self-signed.json").exists(), "never replaced by a self-signed one");
}

#[tokio::test]
async fn switch_settings_are_remembered_and_checked() {
    let mut h = Harness::new().await;
    h.set_up().await;
    let first = h.call(Method::GET, "/api/v1/switch/settings", None).await;
    assert_eq!(
        first.body,
        json!({"layout": "auto", "modifiers": "ctrl+alt", "double_tap": "scrolllock", "roaming": false})
    );
    let bad = json!({"layout": "5x5", "modifiers": "ctrl+alt", "double_tap": "off", "roaming": true});
    let a = h.call(Method::PUT, "/api/v1/switch/settings", Some(bad)).await;
    assert_eq!((a.status, a.body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("layout")));
    let good = json!({"layout": "3x3", "modifiers": "ctrl+shift", "double_tap": "pause", "roaming": true});
    assert_eq!(h.call(Method::PUT, "/api/v1/switch/settings", Some(good.clone())).await.status, StatusCode::OK);
    assert_eq!(h.call(Method::GET, "/api/v1/switch/settings", None).await.body, good);
    assert!(h.dir.path().join("data/switch.json").exists(), "kept on the data disk");
}

#[tokio::test]
async fn keys_for_scripts_are_checked_before_any_is_sent() {
    let mut h = Harness::new().await;
    h.set_up().await;
    assert_eq!(h.call(Method::GET, "/api/v1/screens", None).await.body, json!([]));
    let spec = json!({"name": "keys1", "vcpus": 1, "memory_mib": 32, "boot": {"type": "guest", "guest": "tiny"}});
    let id = h.call(Method::POST, "/api/v1/vms", Some(spec)).await.body["id"].as_str().unwrap().to_string();
    let cases = [
        (json!({"vms": [], "text": "x"}), StatusCode::BAD_REQUEST, "vms", "at least one VM"),
        (json!({"vms": [id]}), StatusCode::BAD_REQUEST, "text", "\"keys\" to press"),
        (json!({"vms": ["nope"], "text": "x"}), StatusCode::NOT_FOUND, "vms[0]", "no VM nope"),
        (json!({"vms": [id], "text": "x"}), StatusCode::CONFLICT, "vms[0]", "keys1 is not running"),
    ];
    for (body, status, field, says) in cases {
        let a = h.call(Method::POST, "/api/v1/screens/keys", Some(body.clone())).await;
        assert_eq!(a.status, status, "{body}: {:?}", a.body);
        assert_eq!(a.body["field"], field, "{body}");
        assert!(a.body["error"].as_str().unwrap().contains(says), "{body}: {:?}", a.body);
    }
    let text = h.call(Method::GET, &format!("/api/v1/vms/{id}/screen/text"), None).await;
    assert_eq!(text.status, StatusCode::CONFLICT);
}

/// Request bodies that are too large or of the wrong shape get the API's
/// `{"error", "field"}` answers (they were a reset stream and plain text).
#[tokio::test]
async fn bad_bodies_get_json_errors_that_name_the_field() {
    let mut h = Harness::new().await;
    h.set_up().await;
    let huge = json!({"name": "x".repeat(2 << 20)});
    let a = h.call(Method::POST, "/api/v1/vms", Some(huge)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.body["error"].as_str().unwrap().contains("1024 KiB"), "{:?}", a.body);
    let a = h
        .call(
            Method::POST,
            "/api/v1/vms",
            Some(json!({"name": 5, "vcpus": 1, "memory_mib": 32, "boot": {"type": "guest", "guest": "tiny"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["field"], "name", "{:?}", a.body);
    assert!(a.body["error"].as_str().unwrap().contains("invalid type"), "{:?}", a.body);
    let a = h.call(Method::PUT, "/api/v1/switch/settings", Some(json!({"layout": "auto"}))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body["error"].as_str().unwrap().contains("missing field"), "{:?}", a.body);
}

/// A body that starts and then stops arriving (a slow or stalled client)
/// once held its request for ever. It now gets a 408 in the API's error
/// shape after `BODY_TIMEOUT`, and the panel answers the next request.
#[tokio::test]
async fn a_body_that_stops_arriving_gets_408() {
    let mut h = Harness::new().await;
    h.set_up().await;
    use futures_util::StreamExt;
    let first: Result<axum::body::Bytes, std::io::Error> = Ok(axum::body::Bytes::from_static(b"{\"name\": \"we"));
    let stalled = futures_util::stream::iter([first]).chain(futures_util::stream::pending());
    let req = h
        .request(Method::POST, "/api/v1/vms")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stalled))
        .unwrap();
    // Paused time jumps ahead whenever the runtime has nothing to do, so the
    // 30 s pass at once.
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let a = h.raw(req).await;
    assert_eq!(a.status, StatusCode::REQUEST_TIMEOUT, "{:?}", a.body);
    assert!(a.body["error"].as_str().unwrap().contains("did not arrive within 30 s"), "{:?}", a.body);
    assert!(started.elapsed() >= crate::app::BODY_TIMEOUT);
    tokio::time::resume();
    assert_eq!(h.call(Method::GET, "/api/v1/vms", None).await.status, StatusCode::OK);
}

/// Logins refused by the rate limit once each appended (and fsynced) an
/// audit entry: a flood filled the log.
#[tokio::test]
async fn a_login_flood_leaves_a_bounded_audit_trail() {
    let mut h = Harness::new().await;
    h.set_up().await;
    for _ in 0..40 {
        h.login("a wrong password!").await;
    }
    let entries = h.call(Method::GET, "/api/v1/audit?limit=500", None).await.body;
    let logins = entries.as_array().unwrap().iter().filter(|e| e["action"] == "login").count();
    assert_eq!(logins, crate::auth::LOGIN_ATTEMPTS + 1, "the failures, then one refusal: {entries}");
}

#[tokio::test]
async fn a_cdrom_takes_uploaded_isos_and_says_what_is_wrong() {
    let mut h = Harness::new().await;
    h.set_up().await;
    let mut iso = vec![0u8; 0x8800];
    iso[0x8001..0x8006].copy_from_slice(b"CD001");
    for name in ["a.iso", "b.iso"] {
        let req = Request::builder()
            .method(Method::PUT)
            .uri(format!("/api/v1/images/{name}?kind=iso"))
            .header(header::COOKIE, format!("kvmos_session={}", h.cookie.clone().unwrap()))
            .header("x-csrf-token", h.csrf.clone().unwrap())
            .body(Body::from(iso.clone()))
            .unwrap();
        assert_eq!(h.raw(req).await.status, StatusCode::CREATED);
    }
    let spec = json!({"name": "inst1", "vcpus": 1, "memory_mib": 64, "boot": {"type": "firmware", "firmware": "bios"},
        "disks": [{"image": "inst1-disk", "size_mib": 8}, {"image": "a.iso"}]});
    let vm = h.call(Method::POST, "/api/v1/vms", Some(spec)).await;
    assert_eq!(vm.status, StatusCode::CREATED, "{:?}", vm.body);
    let id = vm.body["id"].as_str().unwrap().to_string();
    let medium = |disk: usize| format!("/api/v1/vms/{id}/disks/{disk}/medium");

    let disk = h.call(Method::PUT, &medium(0), Some(json!({"image": "b.iso"}))).await;
    assert_eq!((disk.status, disk.body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("disks[0]")));
    assert!(disk.body["error"].as_str().unwrap().contains("not a CD-ROM drive"), "{:?}", disk.body);
    assert_eq!(h.call(Method::PUT, &medium(5), Some(json!({"image": "b.iso"}))).await.status, StatusCode::NOT_FOUND);
    let missing = h.call(Method::PUT, &medium(1), Some(json!({"image": "nope.iso"}))).await;
    assert_eq!((missing.status, missing.body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("image")));
    assert!(h.call(Method::PUT, &medium(1), Some(json!({}))).await.status.is_client_error(), "image is required");
    // The VM is off: an eject would not last; a new ISO goes in its definition.
    let eject = h.call(Method::PUT, &medium(1), Some(json!({"image": null}))).await;
    assert_eq!(eject.status, StatusCode::CONFLICT);
    assert!(eject.body["error"].as_str().unwrap().contains("take the ISO out of its disks"), "{:?}", eject.body);
    let insert = h.call(Method::PUT, &medium(1), Some(json!({"image": "b.iso"}))).await;
    assert_eq!(insert.status, StatusCode::OK, "{:?}", insert.body);
    assert_eq!(insert.body["spec"]["disks"][1]["image"], "b.iso");
    let log = h.call(Method::GET, "/api/v1/audit", None).await;
    assert!(log.body.to_string().contains("inst1 (insert b.iso)"), "audited: {}", log.body);
}

/// Polls a task until it ends.
async fn wait_task(h: &Harness, id: &str) -> Value {
    for _ in 0..500 {
        let t = h.call(Method::GET, &format!("/api/v1/tasks/{id}"), None).await;
        assert_eq!(t.status, StatusCode::OK, "{:?}", t.body);
        if t.body["state"] != "running" {
            return t.body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("task {id} still runs");
}

#[tokio::test(flavor = "multi_thread")]
async fn images_are_downloaded_in_tasks_recognised_converted_and_checked() {
    use sha2::Digest;
    let mut h = Harness::new().await;
    h.set_up().await;
    // A compressed qcow2 made by qemu-img, as distributions publish cloud images.
    let dir = h.dir.path();
    let raw = [b"\xebboot sector".repeat(30), vec![0; 2 << 20], b"the end".to_vec()].concat();
    std::fs::write(dir.join("cloud.raw"), &raw).unwrap();
    let ok = std::process::Command::new("qemu-img")
        .args(["convert", "-c", "-O", "qcow2"])
        .args([dir.join("cloud.raw"), dir.join("cloud.qcow2")])
        .status()
        .expect("qemu-img (package qemu-utils)");
    assert!(ok.success());
    let qcow2 = std::fs::read(dir.join("cloud.qcow2")).unwrap();
    let sha256 = hex::encode(sha2::Sha256::digest(&qcow2));
    let server = crate::test_https::FileServer::start(qcow2).await;
    let import = |body: Value| h.call(Method::POST, "/api/v1/images/import", Some(body));

    // Broken off halfway and resumed; its kind and format found by its content.
    let a = import(json!({"name": "debian-12", "url": server.url("cut-once", "debian.qcow2"), "checksum": format!("sha256:{sha256}")})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    assert_eq!(a.body["kind"], "download");
    let task = wait_task(&h, a.body["id"].as_str().unwrap()).await;
    assert_eq!(task["state"], "done", "{task}");
    let log = task["log"].to_string();
    assert!(log.contains("resuming") && log.contains("SHA-256 checked") && log.contains("a disk image"), "{log}");
    let image = h.call(Method::GET, "/api/v1/images", None).await.body["images"][0].clone();
    assert_eq!((image["name"].as_str(), image["kind"].as_str()), (Some("debian-12"), Some("disk")));
    assert_eq!((image["converted_from"].as_str(), image["sha256"].as_str()), (Some("qcow2"), Some(sha256.as_str())));
    let mut want = raw.clone();
    want.resize(raw.len().next_multiple_of(512), 0);
    assert!(std::fs::read(dir.join("data/images/debian-12")).unwrap() == want, "the raw disk is the qcow2's content");

    // Mistakes found before anything is fetched.
    let e = import(json!({"name": "x", "url": "http://mirror.example/x.qcow2"})).await;
    assert_eq!((e.status, e.body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("url")));
    let e = import(json!({"name": "x", "url": server.url("whole", "x"), "checksum": "abc"})).await;
    assert_eq!(e.body["field"], "checksum");
    let e = import(json!({"name": "debian-12", "url": server.url("whole", "x")})).await;
    assert_eq!((e.status, e.body["field"].as_str()), (StatusCode::CONFLICT, Some("name")));

    // Mistakes found by the download: each task fails with its reason, and leaves nothing.
    let failing = [
        (json!({"name": "bad-sum", "url": server.url("whole", "a"), "checksum": "0".repeat(64)}), "not the one given"),
        (json!({"name": "page", "url": server.url("page", "a")}), "a web page, not an image"),
        (json!({"name": "gone", "url": server.url("missing", "a")}), "404 Not Found"),
        (json!({"name": "cut", "url": server.url("no-ranges", "a")}), "does not resume downloads"),
        (json!({"name": "notiso", "url": server.url("whole", "b"), "kind": "iso"}), "url: this is not an ISO 9660"),
    ];
    for (body, why) in failing {
        let a = import(body.clone()).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
        let task = wait_task(&h, a.body["id"].as_str().unwrap()).await;
        assert_eq!(task["state"], "failed", "{body}: {task}");
        assert!(task["error"].as_str().unwrap().contains(why), "{body}: {task}");
    }
    let images = h.call(Method::GET, "/api/v1/images", None).await.body["images"].as_array().unwrap().len();
    assert_eq!(images, 1, "failed downloads never appear");
    let left: Vec<String> = std::fs::read_dir(dir.join("data/images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".upload-"))
        .collect();
    assert!(left.is_empty(), "no temporary files remain: {left:?}");
    let audit = h.call(Method::GET, "/api/v1/audit", None).await.body.to_string();
    assert!(audit.contains("image.import") && audit.contains("debian-12"), "{audit}");

    // The admin's CAs: without the test CA, the server is not trusted;
    // a bad PEM is refused and changes nothing.
    let ca = h.call(Method::GET, "/api/v1/settings/trusted-ca", None).await;
    assert_eq!(ca.body["count"], 1, "{:?}", ca.body);
    let bad = h.call(Method::PUT, "/api/v1/settings/trusted-ca", Some(json!({"pem": "not a certificate"}))).await;
    assert_eq!((bad.status, bad.body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("pem")));
    assert_eq!(h.call(Method::GET, "/api/v1/settings/trusted-ca", None).await.body["count"], 1);
    let none = h.call(Method::PUT, "/api/v1/settings/trusted-ca", Some(json!({"pem": ""}))).await;
    assert_eq!((none.status, &none.body["count"]), (StatusCode::OK, &json!(0)));
    let a = import(json!({"name": "untrusted", "url": server.url("whole", "c")})).await;
    let task = wait_task(&h, a.body["id"].as_str().unwrap()).await;
    assert!(task["error"].as_str().unwrap().contains("not trusted"), "{task}");
    let pem = crate::test_https::ca_pem();
    let back = h.call(Method::PUT, "/api/v1/settings/trusted-ca", Some(json!({"pem": pem}))).await;
    assert_eq!((back.status, &back.body["count"]), (StatusCode::OK, &json!(1)), "{:?}", back.body);
    let a = import(json!({"name": "trusted", "url": server.url("whole", "d"), "kind": "disk"})).await;
    assert_eq!(wait_task(&h, a.body["id"].as_str().unwrap()).await["state"], "done");

    // A slow download is stopped by the admin: it ends failed, and leaves nothing.
    let big: Vec<u8> = (0..900_000u32).map(|i| i as u8).collect();
    let slow = crate::test_https::FileServer::start(big).await;
    let a = import(json!({"name": "slow", "url": slow.url("slow", "big.img"), "kind": "disk"})).await;
    let id = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(a.body["stoppable"], true);
    for _ in 0..200 {
        if h.call(Method::GET, &format!("/api/v1/tasks/{id}"), None).await.body["done_bytes"].as_u64() > Some(0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stop = h.call(Method::DELETE, &format!("/api/v1/tasks/{id}"), None).await;
    assert_eq!((stop.status, &stop.body["stopping"]), (StatusCode::ACCEPTED, &json!(true)), "{:?}", stop.body);
    let task = wait_task(&h, &id).await;
    assert_eq!(task["state"], "failed", "{task}");
    assert!(task["error"].as_str().unwrap().contains("stopped by the admin"), "{task}");
    assert!(task["done_bytes"].as_u64() < Some(900_000), "it stopped before the end: {task}");
    assert_eq!(h.call(Method::DELETE, &format!("/api/v1/tasks/{id}"), None).await.status, StatusCode::CONFLICT);
    let left: Vec<String> = std::fs::read_dir(dir.join("data/images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".upload-") || n.starts_with("slow"))
        .collect();
    assert!(left.is_empty(), "a stopped download leaves nothing: {left:?}");
}

#[tokio::test]
async fn disks_and_vms_are_cloned_in_tasks_and_disks_grow_but_never_shrink() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let mut h = Harness::new().await;
    h.set_up().await;
    let spec = json!({"name": "src1", "vcpus": 1, "memory_mib": 32, "boot": {"type": "guest", "guest": "tiny"},
        "disks": [{"image": "src1-disk", "size_mib": 64}]});
    let vm = h.call(Method::POST, "/api/v1/vms", Some(spec)).await;
    assert_eq!(vm.status, StatusCode::CREATED, "{:?}", vm.body);
    let id = vm.body["id"].as_str().unwrap().to_string();
    let images = h.dir.path().join("data/images");
    let disk = std::fs::OpenOptions::new().write(true).open(images.join("src1-disk")).unwrap();
    disk.write_all_at(b"first block", 1 << 20).unwrap();
    disk.write_all_at(b"second block", 40 << 20).unwrap();

    // A disk clone: a task, then a sparse copy with the same bytes.
    let c = h.call(Method::POST, "/api/v1/images/src1-disk/clone", Some(json!({"name": "copy1"}))).await;
    assert_eq!(c.status, StatusCode::ACCEPTED, "{:?}", c.body);
    assert_eq!((c.body["kind"].as_str(), c.body["target"].as_str()), (Some("clone"), Some("copy1")));
    let done = wait_task(&h, c.body["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "done", "{done}");
    let (a, b) = (std::fs::read(images.join("src1-disk")).unwrap(), std::fs::read(images.join("copy1")).unwrap());
    assert!(a == b && a.len() == 64 << 20, "the copy has the disk's bytes");
    let allocated = std::fs::metadata(images.join("copy1")).unwrap().blocks() * 512;
    assert!(allocated < 4 << 20, "the copy is sparse: {allocated} bytes allocated");
    let list = h.call(Method::GET, "/api/v1/images", None).await;
    let copy = list.body["images"].as_array().unwrap().iter().find(|i| i["name"] == "copy1").cloned().unwrap();
    assert_eq!((copy["cloned_from"].as_str(), copy["size"].as_u64()), (Some("src1-disk"), Some(64 << 20)));

    let taken = h.call(Method::POST, "/api/v1/images/src1-disk/clone", Some(json!({"name": "copy1"}))).await;
    assert_eq!((taken.status, taken.body["field"].as_str()), (StatusCode::CONFLICT, Some("name")));
    let missing = h.call(Method::POST, "/api/v1/images/nope/clone", Some(json!({"name": "copy2"}))).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // Growing: never smaller, and the file is longer after.
    let shrink = h.call(Method::POST, "/api/v1/images/copy1/grow", Some(json!({"size_mib": 32}))).await;
    assert_eq!((shrink.status, shrink.body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("size_mib")));
    assert!(shrink.body["error"].as_str().unwrap().contains("only grow"), "{:?}", shrink.body);
    let grow = h.call(Method::POST, "/api/v1/images/copy1/grow", Some(json!({"size_mib": 96}))).await;
    assert_eq!((grow.status, grow.body["size"].as_u64()), (StatusCode::OK, Some(96 << 20)), "{:?}", grow.body);
    assert_eq!(std::fs::metadata(images.join("copy1")).unwrap().len(), 96 << 20);
    assert_eq!(std::fs::read(images.join("copy1")).unwrap()[..64 << 20], a[..], "the data is still there");

    // A VM clone: its disk copied under the new name, a new MAC, autostart off.
    let vc = h.call(Method::POST, &format!("/api/v1/vms/{id}/clone"), Some(json!({"name": "src2"}))).await;
    assert_eq!(vc.status, StatusCode::ACCEPTED, "{:?}", vc.body);
    let done = wait_task(&h, vc.body["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "done", "{done}");
    assert!(done["log"].to_string().contains("VM src2 created"), "{done}");
    let vms = h.call(Method::GET, "/api/v1/vms", None).await;
    let src2 = vms.body.as_array().unwrap().iter().find(|v| v["name"] == "src2").cloned().unwrap();
    assert_eq!(src2["spec"]["disks"][0]["image"], "src2-disk");
    assert_ne!(src2["mac"], vm.body["mac"]);
    assert_eq!(std::fs::read(images.join("src2-disk")).unwrap(), a);
    let again = h.call(Method::POST, &format!("/api/v1/vms/{id}/clone"), Some(json!({"name": "src2"}))).await;
    assert_eq!((again.status, again.body["field"].as_str()), (StatusCode::CONFLICT, Some("name")));

    // The task list: newest first.
    let tasks = h.call(Method::GET, "/api/v1/tasks", None).await;
    let targets: Vec<&str> = tasks.body.as_array().unwrap().iter().map(|t| t["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["src2", "copy1"]);
    assert_eq!(h.call(Method::GET, "/api/v1/tasks/nope", None).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cloud_init_settings_are_checked_kept_without_the_password_and_shown() {
    let mut h = Harness::new().await;
    h.set_up().await;
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmosKvmosKvmosKvmosKvmosKvmosKvmosKvmos admin@laptop";
    let mut spec = json!({"name": "cloud1", "vcpus": 1, "memory_mib": 32, "boot": {"type": "guest", "guest": "tiny"},
        "cloud_init": {"hostname": "web1", "user": "ops", "ssh_keys": ["not a key"]}});
    let bad = h.call(Method::POST, "/api/v1/vms", Some(spec.clone())).await;
    assert_eq!((bad.status, bad.body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("cloud_init.ssh_keys[0]")));
    spec["cloud_init"]["ssh_keys"] = json!([key]);
    spec["cloud_init"]["password"] = json!("a long console password");
    let vm = h.call(Method::POST, "/api/v1/vms", Some(spec)).await;
    assert_eq!(vm.status, StatusCode::CREATED, "{:?}", vm.body);
    let ci = &vm.body["spec"]["cloud_init"];
    assert!(ci.get("password").is_none() && ci["password_hash"].as_str().unwrap().starts_with("$6$"), "{ci}");
    let id = vm.body["id"].as_str().unwrap();
    let stored = std::fs::read_dir(h.dir.path().join("data"))
        .unwrap()
        .flatten()
        .flat_map(|e| walk(&e.path()))
        .any(|p| std::fs::read(&p).is_ok_and(|b| String::from_utf8_lossy(&b).contains("a long console password")));
    assert!(!stored, "the password is on no file");
    let seed = h.call(Method::GET, &format!("/api/v1/vms/{id}/cloud-init"), None).await;
    assert_eq!(seed.status, StatusCode::OK);
    let user_data = seed.body["user_data"].as_str().unwrap();
    assert!(user_data.starts_with("#cloud-config") && user_data.contains(key) && user_data.contains("\"ops\""));
    assert!(seed.body["meta_data"].as_str().unwrap().contains("\"local-hostname\": \"web1\""));
    assert!(seed.body["network_config"].is_null(), "no NIC, no network-config");
    // An update that sends the definition back keeps the hash.
    let mut again = vm.body["spec"].clone();
    again["memory_mib"] = json!(48);
    let u = h.call(Method::PUT, &format!("/api/v1/vms/{id}"), Some(again)).await;
    assert_eq!(u.status, StatusCode::OK, "{:?}", u.body);
    assert_eq!(u.body["spec"]["cloud_init"]["password_hash"], ci["password_hash"]);
}

/// Every file below `dir` (or `dir` itself).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(d) => d.flatten().flat_map(|e| walk(&e.path())).collect(),
        Err(_) => vec![dir.to_path_buf()],
    }
}
