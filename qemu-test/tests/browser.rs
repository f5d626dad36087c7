//! The panel in headless Chromium, as an admin meets it: first-boot setup
//! with the code, log out and in, create a VM from the bundled guest, start
//! it, see its console output and type into it, shut it down. Screenshots
//! are kept in target/qemu-test/browser-panel/.
//!
//! The panel runs on this host with the tiny guest bundled (this host's
//! KVM cannot run Linux guests); the appliance variant is in the
//! end-to-end tests.

use kvmos_qemu_test::browser::Browser;
use kvmos_qemu_test::panel::{HostPanel, Panel};
use kvmos_vmm::tiny_guest::READY_LINE;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const PASSWORD: &str = "browser admin password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_login_create_start_console_and_stop_in_chromium() {
    let host = tokio::task::spawn_blocking(|| HostPanel::start("browser-panel")).await.unwrap().unwrap();
    let shots = host.dir.join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let b = Browser::start(&shots).await.unwrap();
    let url = format!("https://127.0.0.1:{}/", host.port);

    // First boot: the setup page asks for the code shown on the console.
    b.client.goto(&url).await.unwrap();
    b.wait_for("#setup-form", T).await.unwrap();
    assert_eq!(b.eval(NAV_SHOWN).await.unwrap(), json!(false), "no navigation before setup");
    b.fill("#code", "00000-00000").await.unwrap();
    b.fill("#password", PASSWORD).await.unwrap();
    b.fill("#password2", PASSWORD).await.unwrap();
    b.click("#setup-submit").await.unwrap();
    b.wait_text("[data-err=code]", "setup code is wrong", T).await.unwrap();
    b.screenshot("01-setup-wrong-code").await.unwrap();
    b.fill("#code", &host.setup_code().unwrap()).await.unwrap();
    b.click("#setup-submit").await.unwrap();
    b.wait_for("#vm-table", T).await.unwrap();
    b.wait_text("#kvm", "available", T).await.unwrap();
    assert_eq!(b.eval(NAV_SHOWN).await.unwrap(), json!(true), "the navigation once logged in");
    b.screenshot("02-dashboard").await.unwrap();

    // Log out and back in.
    b.click("#logout").await.unwrap();
    b.wait_for("#login-form", T).await.unwrap();
    assert_eq!(b.eval(NAV_SHOWN).await.unwrap(), json!(false), "no navigation on the login page");
    b.fill("#password", "not the password").await.unwrap();
    b.click("#login-submit").await.unwrap();
    b.wait_text("[data-err=password]", "wrong", T).await.unwrap();
    b.fill("#password", PASSWORD).await.unwrap();
    b.click("#login-submit").await.unwrap();
    b.wait_for("#vm-table", T).await.unwrap();

    // The wizard: a name error is shown next to the name, then a good VM.
    b.click("#new-vm").await.unwrap();
    b.wait_for("#vm-form", T).await.unwrap();
    b.fill("#name", "Bad Name").await.unwrap();
    b.fill("#memory", "32").await.unwrap();
    b.click("#network").await.unwrap(); // this host has no br0
    b.click("#create").await.unwrap();
    b.wait_text("[data-err=name]", "lowercase", T).await.unwrap();
    b.screenshot("03-new-vm-error").await.unwrap();
    b.fill("#name", "browser1").await.unwrap();
    b.click("#create-start").await.unwrap();

    // The detail page: running, with the live console.
    b.wait_for("#vm-state [data-state=running]", T).await.unwrap();
    b.wait_text(".xterm-rows", READY_LINE, T).await.unwrap();
    let input = b.wait_for(".xterm-helper-textarea", T).await.unwrap();
    input.send_keys("typed-in-chromium").await.unwrap();
    wait_js(&b, "typed-in-chromium on the console", &console_has("typed-in-chromium"), T).await;
    b.screenshot("04-console").await.unwrap();

    // Graceful shutdown from the page.
    b.click("[data-action=shutdown]").await.unwrap();
    b.wait_for("#vm-state [data-state=stopped]", T).await.unwrap();
    b.wait_text("#runs", "powered off", T).await.unwrap();
    b.screenshot("05-stopped").await.unwrap();

    // The dashboard lists it, at phone width too.
    b.client.set_window_size(390, 844).await.unwrap();
    b.client.goto(&url).await.unwrap();
    b.wait_text("#vm-table", "browser1", T).await.unwrap();
    b.screenshot("06-phone-dashboard").await.unwrap();
    b.close().await.unwrap();
    for shot in ["01-setup-wrong-code", "02-dashboard", "04-console", "05-stopped", "06-phone-dashboard"] {
        let len = std::fs::metadata(shots.join(format!("{shot}.png"))).unwrap().len();
        assert!(len > 1000, "{shot}.png was saved");
    }
    drop(host);
}

/// A panel on this host (`name`: its folder under target/qemu-test), set
/// up with the admin password; `prepare` runs against its API first (on a
/// blocking thread, given the panel's folder); then Chromium, logged in,
/// with its screenshots in the panel's folder.
async fn logged_in_browser<T: Send + 'static>(
    name: &'static str,
    prepare: impl FnOnce(&Panel, &std::path::Path) -> T + Send + 'static,
) -> (HostPanel, Browser, T) {
    let host = tokio::task::spawn_blocking(move || HostPanel::start(name)).await.unwrap().unwrap();
    let (port, code, dir) = (host.port, host.setup_code().unwrap(), host.dir.clone());
    let prepared = tokio::task::spawn_blocking(move || {
        let mut panel = Panel::new(port);
        panel.setup(&code, PASSWORD).unwrap();
        prepare(&panel, &dir)
    })
    .await
    .unwrap();
    let shots = host.dir.join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let b = Browser::logged_in(&shots, port, PASSWORD).await.unwrap();
    (host, b, prepared)
}

/// Whether the top bar with the navigation links is on the page.
const NAV_SHOWN: &str =
    "(() => { const t = document.getElementById('topbar'); return !!t && !t.hidden && t.offsetParent !== null; })()";

/// Runs `script` (a JavaScript expression) in the page until it is true.
async fn wait_js(b: &Browser, what: &str, script: &str, timeout: Duration) {
    b.wait_js(what, script, timeout).await.unwrap();
}

/// Whether the serial console's terminal holds `needle` (read from
/// xterm's buffer: the terminal may be scrolled out of view below the
/// screen, where xterm does not render).
fn console_has(needle: &str) -> String {
    format!(
        "(() => {{ if (!term) return false; const b = term.buffer.active; let s = '';
           for (let i = 0; i < b.length; i++) s += b.getLine(i).translateToString(true) + '\\n';
           return s.includes({needle:?}); }})()"
    )
}

/// Whether the screen's canvas has a pixel of this colour (sampled on a
/// grid).
fn canvas_has(rgb: (u8, u8, u8)) -> String {
    format!(
        "(() => {{ const c = document.querySelector('#screen canvas'); if (!c || !c.width) return false;
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
           for (let i = 0; i < d.length; i += 4 * 7) if (d[i] === {} && d[i + 1] === {} && d[i + 2] === {}) return true;
           return false; }})()",
        rgb.0, rgb.1, rgb.2
    )
}

/// The Screen view against a panel running real VMMs: SeaBIOS and the
/// display test guest (`tiny_guest::display_disk`), whose text screen shows
/// in the noVNC canvas; keys typed into the canvas, the Ctrl-Alt-Del
/// button and the "type text" box reach the guest's i8042 (it echoes the
/// scancodes on the serial console, which the page shows too); the VBE mode
/// it then sets resizes the canvas; the dashboard shows a live thumbnail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_screen_view_shows_the_guest_and_types_into_it() {
    let (host, b, id) = logged_in_browser("browser-screen", |panel, _| {
        panel.upload("display.img", "disk", kvmos_vmm::tiny_guest::display_disk()).unwrap();
        panel.start_bios_vm("screen1", "display.img").unwrap()
    })
    .await;
    let port = host.port;
    let url = format!("https://127.0.0.1:{port}/");

    // The dashboard's thumbnail of the running VM.
    wait_js(&b, "the thumbnail", "(() => { const i = document.querySelector('img[data-thumb=screen1]'); return i && i.complete && i.naturalWidth === 720; })()", T).await;
    b.screenshot("01-dashboard-thumbnail").await.unwrap();

    // The VM page: the text screen in the canvas (the guest's line is white
    // on blue).
    b.client.goto(&format!("{url}#/vms/{id}")).await.unwrap();
    b.wait_for("#screen[data-state=connected]", T).await.unwrap();
    wait_js(&b, "the guest's text in the canvas", &canvas_has((0, 0, 0xAA)), T).await;
    b.screenshot("02-screen-text").await.unwrap();
    wait_js(&b, "TEXT on the console", &console_has("TEXT"), T).await;

    // Keys typed into the canvas reach the guest as scancodes.
    let canvas = b.wait_for("#screen canvas", T).await.unwrap();
    canvas.click().await.unwrap();
    canvas.send_keys("a").await.unwrap();
    wait_js(&b, "K1E on the console", &console_has("K1E"), T).await;
    b.click("#screen-cad").await.unwrap();
    wait_js(&b, "K53 on the console", &console_has("K53"), T).await; // Delete: E0 53
    b.click("#screen-type").await.unwrap();
    b.fill("#type-text", "b").await.unwrap();
    b.click("#type-send").await.unwrap();
    wait_js(&b, "K30 on the console", &console_has("K30"), T).await;
    b.screenshot("03-screen-typed").await.unwrap();

    // Enter: the guest sets 640×480 and draws orange over blue.
    canvas.send_keys("\u{E007}").await.unwrap();
    wait_js(&b, "VBE on the console", &console_has("VBE"), T).await;
    wait_js(&b, "the 640×480 mode", "document.querySelector('#screen canvas').width === 640", T).await;
    wait_js(&b, "the orange half", &canvas_has((0xFF, 0x80, 0)), T).await;
    b.screenshot("04-screen-vbe").await.unwrap();

    // Scaling: fitted to the box, then the guest's own size, pixel for pixel.
    let canvas_size =
        "(() => { const c = document.querySelector('#screen canvas'); return [c.clientWidth, c.clientHeight]; })()";
    wait_js(&b, "the screen fitted to its box", &format!("{canvas_size}.join() !== '640,480'"), T).await;
    b.click("#screen-scale").await.unwrap();
    wait_js(
        &b,
        "the button offering to fit again",
        "document.querySelector('#screen-scale').textContent === 'Fit to window'",
        T,
    )
    .await;
    wait_js(&b, "the screen at 640×480", &format!("{canvas_size}.join() === '640,480'"), T).await;
    b.screenshot("05-screen-actual-size").await.unwrap();
    b.click("#screen-scale").await.unwrap();
    wait_js(&b, "fitted again", &format!("{canvas_size}.join() !== '640,480'"), T).await;
    // Full screen: the screen's box fills the display.
    b.click("#screen-full").await.unwrap();
    wait_js(
        &b,
        "the screen full screen",
        "document.fullscreenElement && document.fullscreenElement.id === 'screen'",
        T,
    )
    .await;
    b.screenshot("06-screen-full").await.unwrap();
    b.client.execute("document.exitFullscreen(); return true;", vec![]).await.unwrap();
    wait_js(&b, "full screen left", "!document.fullscreenElement", T).await;
    b.close().await.unwrap();
    for shot in [
        "01-dashboard-thumbnail",
        "02-screen-text",
        "03-screen-typed",
        "04-screen-vbe",
        "05-screen-actual-size",
        "06-screen-full",
    ] {
        let len = std::fs::metadata(host.dir.join("screenshots").join(format!("{shot}.png"))).unwrap().len();
        assert!(len > 1000, "{shot}.png was saved");
    }
    drop(host);
}

/// The CD/DVD drive on a VM's page: a BIOS VM boots an ISO (not hybrid)
/// from its CD-ROM drive; the admin ejects it and the guest (reading its
/// medium every 300 ms through the BIOS) sees an empty drive, then picks
/// another ISO and inserts it, and the guest reads the new medium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vm_page_ejects_and_inserts_isos() {
    use kvmos_vmm::tiny_guest::{CDROM_READ, CDROM_READ_FAILED};
    let (host, b, id) = logged_in_browser("browser-cdrom", |panel, dir| {
        panel.upload_cdrom_media(&dir.join("media")).unwrap();
        panel.start_bios_vm("cd1", "a.iso").unwrap()
    })
    .await;
    let port = host.port;
    b.client.goto(&format!("https://127.0.0.1:{port}/#/vms/{id}")).await.unwrap();
    wait_js(&b, "the first medium read", &console_has(&format!("{CDROM_READ}KVMOSTEST")), T).await;
    b.wait_for("[data-drive='0'] select", T).await.unwrap();
    b.screenshot("01-cdrom-drive").await.unwrap();
    b.click("[data-eject='0']").await.unwrap();
    wait_js(&b, "the empty drive", &console_has(CDROM_READ_FAILED), T).await;
    let pick = "(() => { const s = document.querySelector(\"[data-drive='0'] select\"); s.value = 'b.iso'; return s.value === 'b.iso'; })()";
    wait_js(&b, "b.iso picked", pick, T).await;
    b.click("[data-insert='0']").await.unwrap();
    b.wait_for("[data-drive='0'] option[value='b.iso']:checked", T).await.unwrap();
    wait_js(&b, "the new medium read", &console_has(&format!("{CDROM_READ}SECONDISO")), T).await;
    b.screenshot("02-cdrom-changed").await.unwrap();
    b.close().await.unwrap();
    drop(host);
}

/// The Images page: a disk is cloned (the copy shows in the task list as
/// done, and in the images as a copy) and grown, from the buttons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_page_clones_and_grows_disks_and_lists_tasks() {
    let (host, b, ()) = logged_in_browser("browser-images", |panel, _| {
        panel.ok("POST", "/api/v1/images/disks", Some(json!({"name": "d1", "size_mib": 8}))).unwrap();
    })
    .await;
    let port = host.port;
    b.client.goto(&format!("https://127.0.0.1:{port}/#/images")).await.unwrap();
    b.wait_text("#task-table", "No tasks yet", T).await.unwrap();
    // The name and size the admin types into the prompts.
    b.eval("(() => { window.prompt = () => 'copy-b'; return true; })()").await.unwrap();
    b.click("[data-clone='d1']").await.unwrap();
    b.wait_for("#task-table [data-state=done]", T).await.unwrap();
    b.wait_text("#task-table", "copy-b", T).await.unwrap();
    b.wait_text("#image-table", "copy of d1", T).await.unwrap();
    b.eval("(() => { window.prompt = () => '24'; return true; })()").await.unwrap();
    b.click("[data-grow='copy-b']").await.unwrap();
    b.wait_text("#image-table", "24 MiB", T).await.unwrap();
    b.screenshot("01-images-and-tasks").await.unwrap();

    // Import from a URL: plain http is refused without a checksum, and
    // with one the download runs as a task and the ISO is recognised.
    let mut iso = vec![0u8; 0x9000];
    iso[0x8001..0x8006].copy_from_slice(b"CD001");
    let sum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&iso));
    let url = format!("http://{}/rescue-1.0.iso", serve_http_once(iso));
    b.fill("#im-url", &url).await.unwrap();
    b.click("#import").await.unwrap();
    b.wait_text("[data-err='url']", "give the file's checksum", T).await.unwrap();
    b.fill("#im-sum", &sum).await.unwrap();
    b.click("#import").await.unwrap();
    b.wait_text("#task-table", "rescue-1.0.iso", T).await.unwrap();
    b.wait_text("#image-table", "rescue-1.0.iso", T).await.unwrap();
    let row = b.eval("document.querySelector('#image-table').textContent").await.unwrap();
    assert!(
        row.as_str().unwrap_or_default().contains("rescue-1.0.isoiso"),
        "named from the URL, an ISO by content: {row}"
    );
    b.screenshot("02-imported").await.unwrap();
    // The CAs trusted for downloads: a paste that is not PEM is refused.
    b.click("#trusted-ca summary").await.unwrap();
    b.wait_text("#ca-count", "0 trusted", T).await.unwrap();
    b.fill("#ca-pem", "not a certificate").await.unwrap();
    b.click("#ca-save").await.unwrap();
    b.wait_text("[data-err='pem']", "paste the CA certificates as PEM", T).await.unwrap();
    b.close().await.unwrap();
    drop(host);
}

/// Serves `body` over plain HTTP on 127.0.0.1 to one request; returns
/// the address.
fn serve_http_once(body: Vec<u8>) -> std::net::SocketAddr {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(&body)).unwrap();
    });
    addr
}

/// The wizard's cloud-init section: a wrong SSH key is shown next to the
/// key box; with a good key, a static address and a password the VM is
/// made, and its page shows what the guest gets (the user-data with the
/// key, the network-config with the address; the password only as a hash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wizard_provisions_a_cloud_image_with_cloud_init() {
    let (host, b, ()) = logged_in_browser("browser-cloud-init", |panel, _| {
        panel.ok("POST", "/api/v1/images/disks", Some(json!({"name": "cloud.img", "size_mib": 8}))).unwrap();
    })
    .await;
    let port = host.port;
    b.client.goto(&format!("https://127.0.0.1:{port}/#/vms/new")).await.unwrap();
    b.wait_for("#vm-form", T).await.unwrap();
    b.fill("#name", "cloud1").await.unwrap();
    b.fill("#memory", "64").await.unwrap();
    // "From a cloud image" turns cloud-init on and takes a copy of the image.
    b.eval("(() => { const s = document.querySelector('#source'); s.value = 'cloud:bios'; s.dispatchEvent(new Event('change')); return true; })()").await.unwrap();
    b.wait_for("#ci-on:checked", T).await.unwrap();
    b.fill("#cloud-size", "16").await.unwrap();
    // Its disk on the IDE bus, as for a guest without virtio drivers.
    b.eval("(() => { const s = document.querySelector('#bus'); s.value = 'ide'; s.dispatchEvent(new Event('change')); return true; })()").await.unwrap();
    b.fill("#memory", "64").await.unwrap();
    b.click("#network").await.unwrap(); // this host has no br0
    b.fill("#ci-user", "ops").await.unwrap();
    b.fill("#ci-keys", "not a key").await.unwrap();
    b.click("#create").await.unwrap();
    b.wait_text("[data-err='cloud_init.ssh_keys']", "not an SSH public key", T).await.unwrap();
    b.screenshot("01-wizard-bad-key").await.unwrap();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmosKvmosKvmosKvmosKvmosKvmosKvmosKvmos admin@laptop";
    b.eval(&format!("(() => {{ document.querySelector('#ci-keys').value = {key:?}; return true; }})()")).await.unwrap();
    b.fill("#ci-password", "a long console password").await.unwrap();
    b.eval("(() => { const s = document.querySelector('#ci-net'); s.value = 'static'; s.dispatchEvent(new Event('change')); return true; })()").await.unwrap();
    b.fill("#ci-address", "192.0.2.10/24").await.unwrap();
    b.fill("#ci-gateway", "192.0.2.1").await.unwrap();
    b.click("#create").await.unwrap();
    b.wait_for("#vm-state [data-state=stopped]", T).await.unwrap();
    b.wait_text("#ci-seed", "What the guest gets", T).await.unwrap();
    b.wait_text("#vm-disks", "cloud1-disk (IDE)", T).await.unwrap();
    b.click("#ci-seed summary").await.unwrap();
    b.wait_text("#ci-seed", "ssh_authorized_keys", T).await.unwrap();
    let text = b.eval("document.querySelector('#ci-seed').textContent").await.unwrap();
    let text = text.as_str().unwrap_or_default().to_string();
    assert!(text.contains(key) && text.contains("\"ops\"") && text.contains("$6$"), "{text}");
    assert!(!text.contains("a long console password"), "the password is shown only as a hash");
    // The VM's disk is a 16 MiB copy of the image; the copy made for the
    // refused first try was removed.
    let images = panel_images(&b).await;
    assert!(images.contains("\"cloud1-disk\"") && images.contains("\"cloned_from\":\"cloud.img\""), "{images}");
    assert!(images.contains(&format!("\"size\":{}", 16 << 20)), "{images}");
    b.screenshot("02-vm-cloud-init").await.unwrap();
    b.close().await.unwrap();
    drop(host);
}

/// The panel's image list, fetched by the page's own session.
async fn panel_images(b: &Browser) -> String {
    let v = b.eval("(async () => JSON.stringify(await (await fetch('/api/v1/images')).json()))()").await.unwrap();
    v.as_str().unwrap_or_default().to_string()
}
