//! Who may use the panel.
//!
//! - **First boot**: there is no default password. While none is set, a
//!   one-time setup code is written to the setup-code file (init shows it on
//!   the console) and printed on stderr. `POST /api/v1/setup` with that code
//!   sets the admin password; the code is then gone.
//! - **Passwords** are hashed with argon2id (PHC string on the data disk).
//! - **Sessions** are random tokens in a cookie (HttpOnly, Secure,
//!   SameSite=Strict), kept hashed in memory, with an idle and an absolute
//!   expiry. Each session has a CSRF token that every state-changing request
//!   must send in `X-CSRF-Token`.
//! - **API tokens** (`Authorization: Bearer kvmos_...`) are for scripts;
//!   only their SHA-256 is stored. They need no CSRF token: a browser never
//!   sends them by itself.
//! - **Logins** are rate-limited per client address.

use crate::store::{self, lock, now_unix};
use anyhow::Result;
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const SESSION_COOKIE: &str = "kvmos_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const TOKEN_PREFIX: &str = "kvmos_";
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
pub const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
/// Failed logins allowed per address within [`LOGIN_WINDOW`].
pub const LOGIN_ATTEMPTS: usize = 5;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(300);
pub const MIN_PASSWORD_LEN: usize = 10;
/// Addresses whose failed logins are remembered at most; beyond this the
/// oldest are forgotten, so a flood from many addresses costs bounded
/// memory.
pub const MAX_TRACKED_ADDRESSES: usize = 4096;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct AuthFile {
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    tokens: Vec<StoredToken>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    id: String,
    name: String,
    sha256: String,
    created: u64,
}

/// An API token as the panel lists it (never the secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    /// Unix seconds.
    pub created: u64,
}

struct Session {
    csrf: String,
    created: Instant,
    last_seen: Instant,
}

/// Who made a request, for the audit log.
#[derive(Debug, Clone)]
pub struct Caller {
    pub who: String,
    pub addr: IpAddr,
    /// Cookie sessions must send the CSRF token on state changes.
    pub csrf: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the password is wrong")]
    BadPassword,
    #[error("the setup code is wrong or already used")]
    BadSetupCode,
    #[error("the admin password is already set; log in instead")]
    AlreadySetUp,
    #[error("the panel is not set up yet; enter the setup code shown on the server's console")]
    NotSetUp,
    #[error("too many failed logins from this address; wait {0} s")]
    RateLimited(u64),
    #[error("password: use at least {MIN_PASSWORD_LEN} characters")]
    WeakPassword,
    /// The password could not be stored (the cause is in the panel's log).
    #[error("the password could not be saved on the data disk; check that it has space and is healthy (the panel's log has the cause)")]
    Storage,
}

pub struct Auth {
    path: PathBuf,
    file: Mutex<AuthFile>,
    setup_code: Mutex<Option<String>>,
    setup_code_file: PathBuf,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<Failures>,
}

/// Failed logins by address, and which addresses were already audited as
/// refused in the current window (their further refusals are not logged
/// one by one).
#[derive(Default)]
struct Failures {
    by_address: HashMap<IpAddr, Vec<Instant>>,
    refusal_logged: HashMap<IpAddr, Instant>,
}

impl Failures {
    /// Forgets what is older than the window; then, if still too many
    /// addresses are tracked, the ones whose last failure is oldest.
    fn prune(&mut self) {
        self.by_address.retain(|_, list| {
            list.retain(|t| t.elapsed() < LOGIN_WINDOW);
            !list.is_empty()
        });
        self.refusal_logged.retain(|_, t| t.elapsed() < LOGIN_WINDOW);
        while self.by_address.len() >= MAX_TRACKED_ADDRESSES {
            let oldest = self.by_address.iter().min_by_key(|(_, l)| l.last().copied()).map(|(a, _)| *a);
            match oldest {
                Some(a) => self.by_address.remove(&a),
                None => break,
            };
        }
        while self.refusal_logged.len() >= MAX_TRACKED_ADDRESSES {
            let oldest = self.refusal_logged.iter().min_by_key(|(_, t)| **t).map(|(a, _)| *a);
            match oldest {
                Some(a) => self.refusal_logged.remove(&a),
                None => break,
            };
        }
    }
}

pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("the kernel's random source");
    hex::encode(b)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Equal strings, compared in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Loads the password and tokens; makes a setup code if no password is
    /// set yet.
    pub fn load(data_dir: &Path, setup_code_file: &Path) -> Result<Self> {
        let path = data_dir.join("panel/auth.json");
        let file: AuthFile = store::load_json(&path)?.unwrap_or_default();
        let auth = Self {
            path,
            setup_code: Mutex::new(None),
            setup_code_file: setup_code_file.to_path_buf(),
            file: Mutex::new(file),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(Failures::default()),
        };
        if auth.is_set_up() {
            let _ = std::fs::remove_file(setup_code_file);
        } else {
            // Ten digits in two groups: easy to read off a console, and
            // 10^10 guesses at five per five minutes is out of reach.
            let digits: String = random_hex(8)
                .as_bytes()
                .chunks(2)
                .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap_or("0"), 16).unwrap_or(0) % 100)
                .map(|n| format!("{n:02}"))
                .collect::<String>();
            let code = format!("{}-{}", &digits[..5], &digits[5..10]);
            if let Some(dir) = setup_code_file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            store::write_atomic(setup_code_file, format!("{code}\n").as_bytes(), 0o600)?;
            eprintln!("kvmos-webadmin: first boot: the setup code is {code}");
            *lock(&auth.setup_code) = Some(code);
        }
        Ok(auth)
    }

    pub fn is_set_up(&self) -> bool {
        lock(&self.file).password_hash.is_some()
    }

    fn save(&self, file: &AuthFile) -> Result<()> {
        store::save_json(&self.path, file)
    }

    /// Uses the setup code (once) to set the first password.
    pub fn setup(&self, code: &str, password: &str) -> Result<(), AuthError> {
        if self.is_set_up() {
            return Err(AuthError::AlreadySetUp);
        }
        let mut slot = lock(&self.setup_code);
        let valid = slot.as_deref().is_some_and(|c| constant_time_eq(c, code.trim()));
        if !valid {
            return Err(AuthError::BadSetupCode);
        }
        self.set_password(password)?;
        *slot = None;
        let _ = std::fs::remove_file(&self.setup_code_file);
        Ok(())
    }

    /// Sets the admin password (argon2id, random salt).
    pub fn set_password(&self, password: &str) -> Result<(), AuthError> {
        if password.chars().count() < MIN_PASSWORD_LEN {
            return Err(AuthError::WeakPassword);
        }
        let salt = SaltString::encode_b64(random_hex(16).as_bytes()).map_err(|e| {
            tracing::error!("cannot make a password salt: {e}");
            AuthError::Storage
        })?;
        let hash = hash_one_at_a_time(|| Argon2::default().hash_password(password.as_bytes(), &salt)).map_err(|e| {
            tracing::error!("cannot hash the password: {e}");
            AuthError::Storage
        })?;
        let mut file = lock(&self.file);
        let mut next = file.clone();
        next.password_hash = Some(hash.to_string());
        if let Err(e) = self.save(&next) {
            tracing::error!("cannot save the password: {e:#}");
            return Err(AuthError::Storage);
        }
        *file = next;
        Ok(())
    }

    pub fn check_password(&self, password: &str) -> bool {
        let Some(hash) = lock(&self.file).password_hash.clone() else { return false };
        verify_password(password, &hash)
    }

    /// Refuses an address that failed too often lately.
    pub fn check_rate(&self, addr: IpAddr) -> Result<(), AuthError> {
        let mut failures = lock(&self.failures);
        let Some(list) = failures.by_address.get_mut(&addr) else { return Ok(()) };
        list.retain(|t| t.elapsed() < LOGIN_WINDOW);
        if list.len() >= LOGIN_ATTEMPTS {
            let wait = LOGIN_WINDOW.saturating_sub(list[0].elapsed()).as_secs() + 1;
            return Err(AuthError::RateLimited(wait));
        }
        Ok(())
    }

    pub fn record_failure(&self, addr: IpAddr) {
        let mut failures = lock(&self.failures);
        if !failures.by_address.contains_key(&addr) && failures.by_address.len() >= MAX_TRACKED_ADDRESSES {
            failures.prune();
        }
        failures.by_address.entry(addr).or_default().push(Instant::now());
    }

    /// Whether a refusal by the rate limit is the first for `addr` in this
    /// window: only that one goes to the audit log.
    pub fn first_refusal(&self, addr: IpAddr) -> bool {
        let mut failures = lock(&self.failures);
        if failures.refusal_logged.get(&addr).is_some_and(|t| t.elapsed() < LOGIN_WINDOW) {
            return false;
        }
        if failures.refusal_logged.len() >= MAX_TRACKED_ADDRESSES {
            failures.prune();
        }
        failures.refusal_logged.insert(addr, Instant::now());
        true
    }

    /// How many addresses the rate limit remembers (for tests and the
    /// abuse benchmark).
    pub fn tracked_addresses(&self) -> usize {
        let f = lock(&self.failures);
        f.by_address.len() + f.refusal_logged.len()
    }

    /// Checks the password (rate-limited) and opens a session: returns the
    /// cookie value and the CSRF token.
    pub fn login(&self, addr: IpAddr, password: &str) -> Result<(String, String), AuthError> {
        if !self.is_set_up() {
            return Err(AuthError::NotSetUp);
        }
        self.check_rate(addr)?;
        if !self.check_password(password) {
            self.record_failure(addr);
            return Err(AuthError::BadPassword);
        }
        lock(&self.failures).by_address.remove(&addr);
        Ok(self.new_session())
    }

    pub fn new_session(&self) -> (String, String) {
        let token = random_hex(32);
        let csrf = random_hex(16);
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, s| s.last_seen.elapsed() < SESSION_IDLE && s.created.elapsed() < SESSION_MAX);
        sessions.insert(sha256_hex(&token), Session { csrf: csrf.clone(), created: now, last_seen: now });
        (token, csrf)
    }

    /// The CSRF token of a live session (and the session is touched).
    pub fn session(&self, token: &str) -> Option<String> {
        let key = sha256_hex(token);
        let mut sessions = lock(&self.sessions);
        let s = sessions.get_mut(&key)?;
        if s.last_seen.elapsed() >= SESSION_IDLE || s.created.elapsed() >= SESSION_MAX {
            sessions.remove(&key);
            return None;
        }
        s.last_seen = Instant::now();
        Some(s.csrf.clone())
    }

    pub fn logout(&self, token: &str) {
        lock(&self.sessions).remove(&sha256_hex(token));
    }

    /// Ends every session (after a password change).
    pub fn end_all_sessions(&self) {
        lock(&self.sessions).clear();
    }

    /// The name of the API token with this secret, if it is one of ours.
    pub fn token_name(&self, secret: &str) -> Option<String> {
        let hash = sha256_hex(secret);
        lock(&self.file).tokens.iter().find(|t| constant_time_eq(&t.sha256, &hash)).map(|t| t.name.clone())
    }

    /// Makes an API token; the secret is returned once and never stored.
    pub fn create_token(&self, name: &str) -> Result<(TokenInfo, String)> {
        let secret = format!("{TOKEN_PREFIX}{}", random_hex(24));
        let stored =
            StoredToken { id: random_hex(4), name: name.to_string(), sha256: sha256_hex(&secret), created: now_unix() };
        let mut file = lock(&self.file);
        let mut next = file.clone();
        next.tokens.push(stored.clone());
        self.save(&next)?;
        *file = next;
        Ok((TokenInfo { id: stored.id, name: stored.name, created: stored.created }, secret))
    }

    pub fn tokens(&self) -> Vec<TokenInfo> {
        lock(&self.file)
            .tokens
            .iter()
            .map(|t| TokenInfo { id: t.id.clone(), name: t.name.clone(), created: t.created })
            .collect()
    }

    /// Revokes a token; false if there is none with that ID.
    pub fn revoke_token(&self, id: &str) -> Result<bool> {
        let mut file = lock(&self.file);
        let mut next = file.clone();
        next.tokens.retain(|t| t.id != id);
        if next.tokens.len() == file.tokens.len() {
            return Ok(false);
        }
        self.save(&next)?;
        *file = next;
        Ok(true)
    }

    /// The setup code, for tests.
    #[cfg(test)]
    pub fn current_setup_code(&self) -> Option<String> {
        lock(&self.setup_code).clone()
    }
}

/// Argon2's working memory (19 MiB with the default parameters), allocated
/// once and used by one hash at a time. A flood of logins waits here for
/// its turn instead of each holding 19 MiB of its own on a thread of its
/// own, so the panel's memory stays bounded however many arrive at once.
static ARGON2_MEMORY: Mutex<Vec<Block>> = Mutex::new(Vec::new());

/// Runs `f` (a hash that allocates its own memory) while no other hash runs.
fn hash_one_at_a_time<T>(f: impl FnOnce() -> T) -> T {
    let _turn = lock(&ARGON2_MEMORY);
    f()
}

/// Checks `password` against a PHC argon2 string, in the shared memory.
fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let (Some(expected), Some(salt)) = (hash.hash, hash.salt) else { return false };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else { return false };
    let version = match hash.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    let blocks = params.block_count();
    let mut out = vec![0u8; expected.len()];
    let mut memory = lock(&ARGON2_MEMORY);
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let argon2 = Argon2::new(algorithm, version, params);
    // Output's comparison takes the same time wherever the bytes differ.
    argon2.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..blocks]).is_ok()
        && Output::new(&out).is_ok_and(|out| out == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_memory_verifier_agrees_with_argon2() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let phc = Argon2::default().hash_password(b"correct horse battery", &salt).unwrap().to_string();
        assert!(verify_password("correct horse battery", &phc));
        assert!(!verify_password("correct horse battery!", &phc));
        assert!(!verify_password("", &phc));
        assert!(!verify_password("correct horse battery", "not a PHC string"));
        // Again, in the memory the first check left behind.
        assert!(verify_password("correct horse battery", &phc));
    }

    #[test]
    fn the_setup_code_works_once_and_the_password_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let code_file = dir.path().join("run/setup-code");
        let auth = Auth::load(dir.path(), &code_file).unwrap();
        let code = auth.current_setup_code().unwrap();
        assert_eq!(std::fs::read_to_string(&code_file).unwrap().trim(), code);
        assert_eq!(auth.setup("00000-00000x", "long enough pw"), Err(AuthError::BadSetupCode));
        assert_eq!(auth.setup(&code, "short"), Err(AuthError::WeakPassword));
        auth.setup(&code, "long enough pw").unwrap();
        assert!(!code_file.exists(), "the code is gone from the console");
        assert_eq!(auth.setup(&code, "another password"), Err(AuthError::AlreadySetUp));

        let again = Auth::load(dir.path(), &code_file).unwrap();
        assert!(again.current_setup_code().is_none());
        assert!(!code_file.exists());
        let addr: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(again.login(addr, "wrong password"), Err(AuthError::BadPassword));
        let (token, csrf) = again.login(addr, "long enough pw").unwrap();
        assert_eq!(again.session(&token), Some(csrf));
        again.logout(&token);
        assert_eq!(again.session(&token), None);
    }

    /// A flood of failed logins from many addresses once grew the map of
    /// failures without bound.
    #[test]
    fn failed_logins_from_many_addresses_cost_bounded_memory() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::load(dir.path(), &dir.path().join("code")).unwrap();
        for i in 0..(3 * MAX_TRACKED_ADDRESSES as u32) {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i));
            auth.record_failure(addr);
            auth.first_refusal(addr);
        }
        assert!(auth.tracked_addresses() <= 2 * MAX_TRACKED_ADDRESSES, "{}", auth.tracked_addresses());
        // The newest addresses are still limited.
        let last = IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + 3 * MAX_TRACKED_ADDRESSES as u32 - 1));
        for _ in 0..LOGIN_ATTEMPTS {
            auth.record_failure(last);
        }
        assert!(matches!(auth.check_rate(last), Err(AuthError::RateLimited(_))));
        assert!(!auth.first_refusal(last), "its refusal was audited already in this window");
    }

    /// A password that could not be written once came back as "use at
    /// least 10 characters".
    #[test]
    fn a_password_that_cannot_be_saved_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::load(dir.path(), &dir.path().join("code")).unwrap();
        let code = auth.current_setup_code().unwrap();
        // The file's place is taken by a directory: the rename fails.
        std::fs::create_dir_all(dir.path().join("panel/auth.json/x")).unwrap();
        let e = auth.setup(&code, "long enough pw").unwrap_err();
        assert_eq!(e, AuthError::Storage);
        assert!(e.to_string().contains("could not be saved on the data disk"));
        assert!(!auth.is_set_up());
    }

    #[test]
    fn tokens_are_stored_hashed_and_can_be_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::load(dir.path(), &dir.path().join("code")).unwrap();
        let (info, secret) = auth.create_token("backup script").unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX));
        let on_disk = std::fs::read_to_string(dir.path().join("panel/auth.json")).unwrap();
        assert!(!on_disk.contains(&secret), "only the hash is stored");
        assert_eq!(auth.token_name(&secret).as_deref(), Some("backup script"));
        assert!(auth.revoke_token(&info.id).unwrap());
        assert_eq!(auth.token_name(&secret), None);
        assert!(!auth.revoke_token(&info.id).unwrap());
    }
}
