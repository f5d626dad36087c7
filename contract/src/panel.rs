//! How kvmos-init runs the panel: as a user of its own (never root, with
//! just the capabilities it needs; see `kvmos-webadmin`'s `privsep`), and
//! where its files at run time are, which init reads too.

/// The panel's user and group in the appliance. kvmos has no user
/// database: the numbers are the names.
pub const UID: u32 = 990;
pub const GID: u32 = 990;

/// The panel's own runtime directory (its user's).
pub const RUN_DIR: &str = "/run/kvmos/panel";
/// The one-time setup code of a first boot, which the panel writes and init
/// shows on the console.
pub const SETUP_CODE_FILE: &str = "/run/kvmos/panel/setup-code";
/// The running VMs' directories (`<id>/vm.json`, its sockets, its log).
pub const VMS_RUN_DIR: &str = "/run/kvmos/vms";
