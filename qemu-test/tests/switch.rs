//! The KVM switch in headless Chromium, against a panel on this host running
//! four real VMMs on its /dev/kvm. Each VM boots SeaBIOS and the switch
//! guest (`tiny_guest::switch_disk`), which shows its label on its screen
//! and echoes every byte its i8042 gives on its screen and its serial port
//! (`Kxx`), modifiers and releases included: so each VM's serial console
//! says exactly which keys reached it. Screenshots are kept in
//! target/qemu-test/browser-switch/screenshots.

use kvmos_qemu_test::browser::Browser;
use kvmos_qemu_test::panel::{HostPanel, Panel};
use kvmos_vmm::tiny_guest;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(40);
const PASSWORD: &str = "switch admin password";
const CTRL: char = '\u{e009}';
const ALT: char = '\u{e00a}';
const LEFT: char = '\u{e012}';
const RIGHT: char = '\u{e014}';
const ENTER: char = '\u{e007}';

/// Make and break codes (scancode set 1, as the guest reads them through
/// the i8042's translation) as the guest echoes them.
fn echo(make: u8) -> String {
    format!("K{make:02X}\nK{:02X}\n", make | 0x80)
}

struct Vms {
    host: HostPanel,
    ids: Vec<String>,
}

impl Vms {
    fn serial(&self, i: usize) -> String {
        self.host.serial(&self.ids[i]).unwrap()
    }

    /// Waits until VM `i`'s serial console has `needle`.
    async fn wait_serial(&self, i: usize, needle: &str) {
        let deadline = std::time::Instant::now() + T;
        while !self.serial(i).contains(needle) {
            assert!(std::time::Instant::now() < deadline, "VM {} never echoed {needle:?}:\n{}", i + 1, self.serial(i));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first four VMs' serial consoles, for the assertions that keys
    /// reached exactly some of them.
    fn all(&self) -> Vec<String> {
        (0..4).map(|i| self.serial(i)).collect()
    }
}

/// Asserts that `needle` is on exactly the serial consoles in `which`.
fn only(consoles: &[String], needle: &str, which: &[usize]) {
    for (i, c) in consoles.iter().enumerate() {
        assert_eq!(c.contains(needle), which.contains(&i), "{needle:?} on VM {}: {c:?}", i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_page_is_a_kvm_switch_for_four_vms() {
    let host = tokio::task::spawn_blocking(|| HostPanel::start("browser-switch")).await.unwrap().unwrap();
    let port = host.port;
    let code = host.setup_code().unwrap();
    let (panel, ids) = tokio::task::spawn_blocking(move || {
        let mut panel = Panel::new(port);
        panel.setup(&code, PASSWORD).unwrap();
        let mut ids = Vec::new();
        for i in 1..=5 {
            panel.upload(&format!("sw{i}.img"), "disk", tiny_guest::switch_disk(&format!("vm-{i}"), false)).unwrap();
            let vm = panel
                .ok(
                    "POST",
                    "/api/v1/vms",
                    Some(json!({"name": format!("sw{i}"), "vcpus": 1, "memory_mib": 16,
                        "boot": {"type": "firmware", "firmware": "bios"}, "disks": [{"image": format!("sw{i}.img")}]})),
                )
                .unwrap();
            let id = vm["id"].as_str().unwrap().to_string();
            if i <= 4 {
                panel.action(&id, "start").unwrap();
            }
            ids.push(id);
        }
        (panel, ids)
    })
    .await
    .unwrap();
    let vms = Vms { host, ids };
    for i in 0..4 {
        vms.wait_serial(i, &format!("READY vm-{}", i + 1)).await;
    }

    let shots = vms.host.dir.join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let b = Browser::logged_in(&shots, port, PASSWORD).await.unwrap();
    b.click("#nav a[data-nav=switch]").await.unwrap();

    // All four screens, in name order; the first has the focus and shows
    // in full-size noVNC, the others as shrunk tiles from the panel.
    b.wait_js("four tiles", "document.querySelectorAll('.tile').length === 4", T).await.unwrap();
    let order: Vec<String> = serde_json::from_value(
        b.eval("[...document.querySelectorAll('.tile')].map((t) => t.dataset.tileName)").await.unwrap(),
    )
    .unwrap();
    assert_eq!(order, ["sw1", "sw2", "sw3", "sw4"]);
    b.wait_js("the focus on sw1", &focus_is(&vms.ids[0]), T).await.unwrap();
    for i in 1..4 {
        b.wait_js(&format!("sw{}'s picture", i + 1), &tile_has_blue(&vms.ids[i], ".tile-canvas"), T).await.unwrap();
    }
    b.wait_js("sw1's full-size view", &tile_has_blue(&vms.ids[0], ".tile-view canvas"), T).await.unwrap();
    b.screenshot("01-grid").await.unwrap();

    // Keys go to the focused VM only.
    b.type_keys("a").await.unwrap();
    vms.wait_serial(0, &echo(0x1E)).await;

    // Each hotkey moves the focus; it reaches no guest; the keys after it
    // reach only the newly focused VM.
    b.chord(&[CTRL, ALT, '2']).await.unwrap();
    b.wait_js("the focus on sw2", &focus_is(&vms.ids[1]), T).await.unwrap();
    b.type_keys("b").await.unwrap();
    vms.wait_serial(1, &echo(0x30)).await;
    b.chord(&[CTRL, ALT, RIGHT]).await.unwrap();
    b.wait_js("the focus on sw3", &focus_is(&vms.ids[2]), T).await.unwrap();
    b.type_keys("c").await.unwrap();
    vms.wait_serial(2, &echo(0x2E)).await;
    b.chord(&[CTRL, ALT, LEFT]).await.unwrap();
    b.wait_js("the focus back on sw2", &focus_is(&vms.ids[1]), T).await.unwrap();
    // Scroll Lock twice: the next tile. WebDriver has no Scroll Lock key,
    // so the page gets the key events it would.
    b.eval("(() => { for (const t of ['keydown', 'keyup', 'keydown', 'keyup']) window.dispatchEvent(new KeyboardEvent(t, { code: 'ScrollLock', key: 'ScrollLock' })); return true; })()")
        .await
        .unwrap();
    b.wait_js("the focus on sw3 again", &focus_is(&vms.ids[2]), T).await.unwrap();
    b.type_keys("d").await.unwrap();
    vms.wait_serial(2, &echo(0x20)).await;
    b.screenshot("02-focus-on-sw3").await.unwrap();
    let c = vms.all();
    only(&c, &echo(0x1E), &[0]);
    only(&c, &echo(0x30), &[1]);
    only(&c, &echo(0x2E), &[2]);
    only(&c, &echo(0x20), &[2]);
    for hotkey_byte in ["K1D\n", "K38\n", "K03\n", "K4D\n", "K4B\n", "K46\n", "KE0\n"] {
        only(&c, hotkey_byte, &[]); // Ctrl, Alt, '2', Right, Left, Scroll Lock, any 0xE0 key
    }

    // A key combination that is not a hotkey reaches the guest whole.
    b.chord(&[CTRL, 'x']).await.unwrap();
    vms.wait_serial(2, "K1D\nK2D\nKAD\nK9D\n").await;

    // Mouse roaming: the pointer over a tile gives it the focus.
    b.click("#sw-roaming").await.unwrap();
    b.hover(&format!(".tile[data-vm-id='{}'] .tile-body", vms.ids[3])).await.unwrap();
    b.wait_js("the focus on sw4 under the pointer", &focus_is(&vms.ids[3]), T).await.unwrap();
    b.type_keys("e").await.unwrap();
    vms.wait_serial(3, &echo(0x12)).await;
    b.click("#sw-roaming").await.unwrap();

    // Broadcast: keys reach exactly the marked VMs (sw1 and sw3).
    for i in [0, 2] {
        b.click(&format!(".tile[data-vm-id='{}'] .tile-mark", vms.ids[i])).await.unwrap();
    }
    b.click("#sw-broadcast").await.unwrap();
    b.wait_js("the broadcast notice", "!document.querySelector('#sw-broadcasting').hidden", T).await.unwrap();
    b.screenshot("03-broadcast").await.unwrap();
    b.type_keys("f").await.unwrap();
    vms.wait_serial(0, &echo(0x21)).await;
    vms.wait_serial(2, &echo(0x21)).await;
    // Broadcast off with one key combination; keys go to the focus again.
    b.chord(&[CTRL, ALT, 'b']).await.unwrap();
    b.wait_js("broadcast off", "document.querySelector('#sw-broadcasting').hidden", T).await.unwrap();
    let focus: String = serde_json::from_value(b.eval("switchView.state().focus").await.unwrap()).unwrap();
    let focused = vms.ids.iter().position(|id| *id == focus).unwrap();
    b.type_keys("g").await.unwrap();
    vms.wait_serial(focused, &echo(0x22)).await;
    let c = vms.all();
    only(&c, &echo(0x12), &[3]);
    only(&c, &echo(0x21), &[0, 2]);
    only(&c, &echo(0x22), &[focused]);
    // The hotkey's B never reached a guest: 'b' was typed once, into sw2.
    assert_eq!(c.iter().map(|s| s.matches(&echo(0x30)).count()).sum::<usize>(), 1, "{c:?}");

    // Full screen and back to the grid by hotkey.
    b.chord(&[CTRL, ALT, '4']).await.unwrap();
    b.chord(&[CTRL, ALT, ENTER]).await.unwrap();
    b.wait_js("sw4 full screen", &format!("switchView.state().full === '{}'", vms.ids[3]), T).await.unwrap();
    b.wait_js(
        "one tile shown",
        "[...document.querySelectorAll('.tile')].filter((t) => t.getClientRects().length > 0).length === 1",
        T,
    )
    .await
    .unwrap();
    b.wait_js("sw4's full-screen view", &tile_has_blue(&vms.ids[3], ".tile-view canvas"), T).await.unwrap();
    b.screenshot("04-full-screen").await.unwrap();
    b.chord(&[CTRL, ALT, '0']).await.unwrap();
    b.wait_js(
        "the grid back",
        "[...document.querySelectorAll('.tile')].filter((t) => t.getClientRects().length > 0).length === 4",
        T,
    )
    .await
    .unwrap();
    only(&vms.all(), "K1C\n", &[]); // Enter

    // VMs that start or stop come and go without a reload.
    let (p, start, stop) = (panel, vms.ids[4].clone(), vms.ids[1].clone());
    let panel = tokio::task::spawn_blocking(move || {
        p.action(&start, "start").unwrap();
        p.action(&stop, "force-off").unwrap();
        p
    })
    .await
    .unwrap();
    let names = "[...document.querySelectorAll('.tile')].map((t) => t.dataset.tileName).join(',')";
    b.wait_js("sw5 in and sw2 out", &format!("{names} === 'sw1,sw3,sw4,sw5'"), T).await.unwrap();
    b.wait_js("sw5's picture", &tile_has_blue(&vms.ids[4], ".tile-canvas"), T).await.unwrap();
    b.screenshot("05-sw5-in-sw2-out").await.unwrap();
    b.close().await.unwrap();
    for shot in ["01-grid", "02-focus-on-sw3", "03-broadcast", "04-full-screen", "05-sw5-in-sw2-out"] {
        let len = std::fs::metadata(shots.join(format!("{shot}.png"))).unwrap().len();
        assert!(len > 1000, "{shot}.png was saved");
    }
    drop(panel);
}

fn focus_is(id: &str) -> String {
    format!(
        "switchView && switchView.state().focus === '{id}' && document.querySelector(\".tile[data-vm-id='{id}']\").classList.contains('focused')"
    )
}

/// Whether the tile's canvas (`which`) shows the blue of the guest's title
/// row (VGA colour 1, 0x0000AA), sampled on a grid.
fn tile_has_blue(id: &str, which: &str) -> String {
    format!(
        "(() => {{ const c = document.querySelector(\".tile[data-vm-id='{id}'] {which}\"); if (!c || !c.width) return false;
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
           for (let i = 0; i < d.length; i += 4 * 3) if (d[i] === 0 && d[i + 1] === 0 && d[i + 2] === 0xAA) return true;
           return false; }})()"
    )
}
