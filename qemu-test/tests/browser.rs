//! The panel in headless Chromium, as an admin meets it: first-boot setup
//! with the code, log out and in, create a VM from the bundled guest, start
//! it, see its console output and type into it, shut it down. Screenshots
//! are kept in target/qemu-test/browser-panel/.
//!
//! The panel runs on this host with the tiny guest bundled (this host's
//! KVM cannot run Linux guests); the appliance variant is in the
//! end-to-end tests.

use kvmos_qemu_test::browser::Browser;
use kvmos_qemu_test::panel::HostPanel;
use kvmos_vmm::tiny_guest::READY_LINE;
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
    b.screenshot("02-dashboard").await.unwrap();

    // Log out and back in.
    b.click("#logout").await.unwrap();
    b.wait_for("#login-form", T).await.unwrap();
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
    b.wait_text(".xterm-rows", "typed-in-chromium", T).await.unwrap();
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
