//! Headless Chromium driven through ChromeDriver (WebDriver), for the UI
//! tests. Chromium runs with the flags this machine needs (DESIGN.md and
//! the machine notes): no sandbox as root, no background networking, and a
//! fresh profile; the panel's self-signed certificate is accepted.

use anyhow::{anyhow, bail, Context, Result};
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: PathBuf,
    shots: PathBuf,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium; screenshots go to
    /// `shots`.
    pub async fn start(shots: &Path) -> Result<Self> {
        // Two rustls providers are linked in (ring, and aws-lc through the
        // WebDriver client); name one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = kvmos_image_builder::qemu::free_port()?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start chromedriver (apt-get install chromium-driver)")?;
        let profile = shots.join("profile");
        std::fs::create_dir_all(&profile)?;
        let caps = serde_json::json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--ignore-certificate-errors", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        });
        let caps = caps.as_object().cloned().unwrap_or_default();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::rustls()?.capabilities(caps.clone()).connect(&url).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => bail!("cannot start Chromium through chromedriver: {e}"),
            }
        };
        Ok(Self { client, driver, _profile: profile, shots: shots.to_path_buf() })
    }

    /// Starts Chromium ([`Browser::start`]) on the panel at `port`, logged
    /// in with `password`, on the dashboard.
    pub async fn logged_in(shots: &Path, port: u16, password: &str) -> Result<Self> {
        let b = Self::start(shots).await?;
        b.client.goto(&format!("https://127.0.0.1:{port}/")).await?;
        b.fill("#password", password).await?;
        b.click("#login-submit").await?;
        b.wait_for("#vm-table", Duration::from_secs(60)).await?;
        Ok(b)
    }

    /// Saves a PNG screenshot as `<shots>/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Result<fantoccini::elements::Element> {
        self.client
            .wait()
            .at_most(timeout)
            .for_element(Locator::Css(css))
            .await
            .map_err(|e| anyhow!("no {css} within {timeout:?}: {e}"))
    }

    pub async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let el = self.wait_for(css, Duration::from_secs(20)).await?;
        el.clear().await?;
        el.send_keys(text).await?;
        Ok(())
    }

    pub async fn click(&self, css: &str) -> Result<()> {
        self.wait_for(css, Duration::from_secs(20)).await?.click().await?;
        Ok(())
    }

    /// Waits until the text of `css` contains `needle`.
    pub async fn wait_text(&self, css: &str, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(el) => el.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(needle) {
                return Ok(text);
            }
            if Instant::now() > deadline {
                bail!("{css} never showed {needle:?}; it shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Presses `keys` (characters, or WebDriver's key code points such as
    /// `\u{e009}` for Control) in order, then releases them in reverse, on
    /// whatever has the focus: a chord like Ctrl+Alt+2.
    pub async fn chord(&self, keys: &[char]) -> Result<()> {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let mut seq = KeyActions::new("keyboard".into());
        for &k in keys {
            seq = seq.then(KeyAction::Down { value: k });
        }
        for &k in keys.iter().rev() {
            seq = seq.then(KeyAction::Up { value: k });
        }
        self.client.perform_actions(seq).await?;
        self.client.release_actions().await?;
        Ok(())
    }

    /// Types `text`, a key press and release per character.
    pub async fn type_keys(&self, text: &str) -> Result<()> {
        for c in text.chars() {
            self.chord(&[c]).await?;
        }
        Ok(())
    }

    /// Moves the mouse to the middle of `css`.
    pub async fn hover(&self, css: &str) -> Result<()> {
        use fantoccini::actions::{InputSource, MouseActions, PointerAction};
        let element = self.wait_for(css, Duration::from_secs(20)).await?;
        let seq = MouseActions::new("mouse".into()).then(PointerAction::MoveToElement {
            element,
            duration: Some(Duration::from_millis(50)),
            x: 0.0,
            y: 0.0,
        });
        self.client.perform_actions(seq).await?;
        Ok(())
    }

    /// Evaluates a JavaScript expression in the page.
    pub async fn eval(&self, expr: &str) -> Result<serde_json::Value> {
        Ok(self.client.execute(&format!("return ({expr});"), vec![]).await?)
    }

    /// Evaluates `expr` until it is true, for at most `timeout`.
    pub async fn wait_js(&self, what: &str, expr: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(&format!("!!({expr})")).await?.as_bool() == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the page never showed {what} ({expr})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn close(mut self) -> Result<()> {
        self.client.clone().close().await?;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
