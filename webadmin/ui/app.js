// The kvmos panel: one page, routed by the URL fragment. Every call goes
// through api(), which sends the CSRF token and shows errors next to the
// field the API names.
'use strict';

const app = document.getElementById('app');
let csrf = null;
let timer = null;
let term = null;
let socket = null;
let screen = null;
let switchView = null;

const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const mib = (bytes) => `${Math.round(bytes / 1048576).toLocaleString()} MiB`;
const gib = (bytes) => `${(bytes / 1073741824).toFixed(1)} GiB`;
const when = (secs) => (secs ? new Date(secs * 1000).toLocaleString() : '—');
const duration = (s) => `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h ${Math.floor((s % 3600) / 60)}m`;

class ApiError extends Error {
  constructor(status, body) { super(body.error || `HTTP ${status}`); this.status = status; this.field = body.field; }
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: 'same-origin' };
  if (csrf && method !== 'GET') opts.headers['X-CSRF-Token'] = csrf;
  if (body !== undefined) { opts.headers['Content-Type'] = 'application/json'; opts.body = JSON.stringify(body); }
  const r = await fetch(path, opts);
  if (r.status === 401 && !path.endsWith('/login') && !path.endsWith('/setup')) { csrf = null; go('#/login'); throw new ApiError(401, { error: 'log in first' }); }
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new ApiError(r.status, data || {});
  return data;
}

function toast(msg, error) {
  const t = document.getElementById('toast');
  t.textContent = msg; t.className = error ? 'error' : ''; t.hidden = false;
  clearTimeout(t._h); t._h = setTimeout(() => { t.hidden = true; }, 5000);
}

// Shows an API error next to its field (data-err="field"), or as a toast.
function showError(form, e) {
  form.querySelectorAll('.err').forEach((el) => { el.textContent = ''; });
  // The field's own slot, else its list's (`ssh_keys[1]` → `ssh_keys`), else its section's.
  const slot = e.field && [e.field, e.field.replace(/\[\d+\]$/, ''), e.field.split('.')[0]]
    .map((f) => form.querySelector(`[data-err="${CSS.escape(f)}"]`)).find(Boolean);
  if (slot) slot.textContent = e.message; else toast(e.message, true);
}

function go(hash) { if (location.hash !== hash) location.hash = hash; else route(); }

function stopLive() {
  clearInterval(timer); timer = null;
  if (socket) { socket.close(); socket = null; }
  if (term) { term.dispose(); term = null; }
  if (screen) { screen.close(); screen = null; }
  if (switchView) { switchView.close(); switchView = null; }
}

async function route() {
  stopLive();
  const h = location.hash || '#/';
  document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('active', a.getAttribute('href') === h));
  if (h === '#/setup') return setupPage();
  if (h === '#/login') return loginPage();
  if (!csrf) {
    try { csrf = (await api('GET', '/api/v1/session')).csrf; } catch (e) {
      const s = await api('GET', '/api/v1/setup');
      return go(s.needed ? '#/setup' : '#/login');
    }
  }
  document.getElementById('topbar').hidden = false;
  try {
    if (h === '#/') return await dashboard();
    if (h === '#/vms/new') return await newVm();
    if (h === '#/switch') return await switchPage();
    if (h.startsWith('#/vms/')) return await vmDetail(h.slice(6));
    if (h === '#/images') return await imagesPage();
    if (h === '#/audit') return await auditPage();
    if (h === '#/settings') return await settingsPage();
    app.innerHTML = '<div class="card">Page not found. <a href="#/">Dashboard</a></div>';
  } catch (e) { if (e.status !== 401) app.innerHTML = `<div class="card err">${esc(e.message)}</div>`; }
}

function authShell(title, inner) {
  document.getElementById('topbar').hidden = true;
  app.innerHTML = `<div class="auth card"><h1><img src="/assets/favicon.svg" alt="" width="24" height="24"> ${title}</h1>${inner}</div>`;
}

function setupPage() {
  authShell('Set up kvmos', `
    <p class="hint">Enter the setup code shown on the server's console, then choose the admin password.</p>
    <form id="setup-form">
      <div class="row"><label for="code">Setup code</label><input id="code" name="code" autocomplete="one-time-code" required><div class="err" data-err="code"></div></div>
      <div class="row"><label for="password">Admin password</label><input id="password" type="password" autocomplete="new-password" required minlength="10"><div class="hint">At least 10 characters.</div><div class="err" data-err="password"></div></div>
      <div class="row"><label for="password2">Repeat the password</label><input id="password2" type="password" autocomplete="new-password" required><div class="err" data-err="password2"></div></div>
      <button id="setup-submit" type="submit">Set password</button>
    </form>`);
  const f = document.getElementById('setup-form');
  f.onsubmit = async (ev) => {
    ev.preventDefault();
    const pw = f.querySelector('#password').value;
    if (pw !== f.querySelector('#password2').value) return showError(f, { field: 'password2', message: 'The passwords differ.' });
    try { csrf = (await api('POST', '/api/v1/setup', { code: f.querySelector('#code').value, password: pw })).csrf; go('#/'); } catch (e) { showError(f, e); }
  };
}

function loginPage() {
  authShell('kvmos', `
    <form id="login-form">
      <div class="row"><label for="password">Admin password</label><input id="password" type="password" autocomplete="current-password" required autofocus><div class="err" data-err="password"></div></div>
      <button id="login-submit" type="submit">Log in</button>
    </form>`);
  const f = document.getElementById('login-form');
  f.onsubmit = async (ev) => {
    ev.preventDefault();
    try { csrf = (await api('POST', '/api/v1/login', { password: f.querySelector('#password').value })).csrf; go('#/'); } catch (e) { showError(f, e); }
  };
}

function stateBadge(s) { return `<span class="badge ${esc(s)}" data-state="${esc(s)}">${esc(s)}</span>`; }

function vmButtons(vm) {
  const b = (action, label, cls = 'secondary') => `<button class="${cls}" data-action="${action}" data-vm="${esc(vm.id)}">${label}</button>`;
  if (vm.state === 'stopped') return b('start', 'Start', '');
  if (vm.state === 'paused') return b('resume', 'Resume', '') + b('force-off', 'Force off', 'danger');
  return b('shutdown', 'Shut down') + b('force-off', 'Force off', 'danger');
}

async function act(id, action) {
  try { await api('POST', `/api/v1/vms/${id}/actions`, { action }); toast(`${action}: done`); } catch (e) { toast(e.message, true); }
  route();
}

function wireActions(root) {
  root.querySelectorAll('[data-action]').forEach((btn) => {
    btn.onclick = () => {
      const a = btn.dataset.action;
      if (a === 'force-off' && !confirm('Force off? The guest loses unsaved data, like pulling the plug.')) return;
      btn.disabled = true; act(btn.dataset.vm, a);
    };
  });
}

async function dashboard() {
  const [host, vms] = await Promise.all([api('GET', '/api/v1/host'), api('GET', '/api/v1/vms')]);
  const d = host.data_disk;
  app.innerHTML = `
    <h1>${esc(host.hostname || 'kvmos')}</h1>
    ${d.ram_only ? '<div class="notice warn">RAM-only mode: no data disk is mounted, so VMs and settings are lost at reboot.</div>' : ''}
    <div class="grid" id="host">
      <div class="card stat"><div class="label">CPU</div><div class="value">${host.cpus} × ${esc(host.cpu_model)}</div></div>
      <div class="card stat"><div class="label">Memory used</div><div class="value">${mib(host.memory_used_bytes)} of ${mib(host.memory_total_bytes)}</div></div>
      <div class="card stat"><div class="label">KVM</div><div class="value" id="kvm">${host.kvm_available ? 'available' : 'not available'}</div></div>
      <div class="card stat"><div class="label">Data disk</div><div class="value" id="datadisk">${d.mounted ? `mounted, ${gib(d.free_bytes)} free` : 'RAM only'}</div></div>
      <div class="card stat"><div class="label">Address</div><div class="value mono">${esc(host.addresses.join(', ') || '—')}</div></div>
      <div class="card stat"><div class="label">Uptime · version</div><div class="value">${duration(host.uptime_secs)} · ${esc(host.version)}</div></div>
    </div>
    <div class="card">
      <div style="display:flex;justify-content:space-between;align-items:center"><h2>Virtual machines</h2><a class="button" href="#/vms/new" id="new-vm">New VM</a></div>
      <div class="table-wrap"><table id="vm-table"><thead><tr><th>Name</th><th>State</th><th class="hide-narrow">vCPUs</th><th class="hide-narrow">Memory</th><th class="hide-narrow">Screen</th><th></th></tr></thead><tbody></tbody></table></div>
      <p class="muted" id="no-vms" hidden>No VMs yet. Create one from the demo guest to try kvmos.</p>
    </div>`;
  const render = (list) => {
    const tb = app.querySelector('#vm-table tbody');
    if (!tb) return;
    tb.innerHTML = list.map((vm) => `<tr data-vm-row="${esc(vm.name)}"><td><a href="#/vms/${esc(vm.id)}">${esc(vm.name)}</a>${vm.spec.autostart ? ' <span class="muted">· autostart</span>' : ''}</td><td>${stateBadge(vm.state)}</td><td class="hide-narrow">${vm.spec.vcpus}</td><td class="hide-narrow">${vm.spec.memory_mib} MiB</td><td class="hide-narrow">${thumbnail(vm)}</td><td><div class="actions">${vmButtons(vm)}</div></td></tr>`).join('');
    app.querySelector('#no-vms').hidden = list.length > 0;
    wireActions(tb);
  };
  render(vms);
  // Live state without a reload.
  timer = setInterval(async () => { try { render(await api('GET', '/api/v1/vms')); } catch (e) { /* shown on next navigation */ } }, 2000);
}

// A running firmware VM's screen, refreshed with the table.
function thumbnail(vm) {
  if (vm.spec.boot.type !== 'firmware' || vm.state !== 'running') return '<span class="muted">—</span>';
  return `<a href="#/vms/${esc(vm.id)}"><img class="thumb" data-thumb="${esc(vm.name)}" alt="screen of ${esc(vm.name)}" src="/api/v1/vms/${esc(vm.id)}/screenshot?t=${Date.now()}"></a>`;
}

async function newVm() {
  const [images, host] = await Promise.all([api('GET', '/api/v1/images'), api('GET', '/api/v1/host')]);
  const kernels = images.images.filter((i) => i.kind === 'kernel');
  const initrds = images.images.filter((i) => i.kind === 'initrd');
  const disks = images.images.filter((i) => i.kind === 'disk');
  const isos = images.images.filter((i) => i.kind === 'iso');
  const opt = (v, label) => `<option value="${esc(v)}">${esc(label)}</option>`;
  const sources = images.guests.map((g) => opt(`guest:${g.name}`, `Bundled: ${g.name} — ${g.description}`)).join('')
    + kernels.map((k) => opt(`kernel:${k.name}`, `Kernel image: ${k.name}`)).join('')
    + (disks.length ? opt('cloud:bios', 'From a cloud image (a copy of an imported disk, provisioned by cloud-init)') : '')
    + opt('install:bios', 'Install from an ISO — an empty disk and the ISO in the CD-ROM, BIOS')
    + opt('install:uefi', 'Install from an ISO — an empty disk and the ISO in the CD-ROM, UEFI')
    + opt('firmware:bios', 'Boot from a disk image or ISO — BIOS (SeaBIOS)')
    + opt('firmware:uefi', 'Boot from a disk image or ISO — UEFI (OVMF)');
  app.innerHTML = `
    <h1>New virtual machine</h1>
    <form id="vm-form" class="card">
      <div class="inline">
        <div class="row"><label for="name">Name</label><input id="name" required placeholder="web1"><div class="hint">Lowercase letters, digits, '-', '.', '_'.</div><div class="err" data-err="name"></div></div>
        <div class="row"><label for="vcpus">vCPUs</label><input id="vcpus" type="number" min="1" max="${host.cpus}" value="1"><div class="err" data-err="vcpus"></div></div>
        <div class="row"><label for="memory">Memory (MiB)</label><input id="memory" type="number" min="16" value="128"><div class="hint">${mib(host.memory_free_bytes)} free on the host.</div><div class="err" data-err="memory_mib"></div></div>
        <div class="row"><label for="cpu-weight">CPU weight</label><input id="cpu-weight" type="number" min="1" max="10000" placeholder="100"><div class="hint">Its share of the CPUs when all VMs are busy: 200 gets twice what 100 gets.</div><div class="err" data-err="cpu_weight"></div></div>
      </div>
      <div class="row"><label for="source">Boot</label><select id="source">${sources}</select><div class="err" data-err="boot"></div></div>
      <div class="row" id="initrd-row" hidden><label for="initrd">Initrd</label><select id="initrd">${opt('', 'none')}${initrds.map((i) => opt(i.name, i.name)).join('')}</select></div>
      <div class="inline" id="cloud-row" hidden>
        <div class="row"><label for="cloud-image">Cloud image</label><select id="cloud-image">${disks.map((d) => opt(d.name, `${d.name} (${mib(d.size)})`)).join('')}</select><div class="hint">The VM gets a copy; import images from a URL in Images.</div></div>
        <div class="row"><label for="cloud-size">Disk size (MiB)</label><input id="cloud-size" type="number" min="1" value="10240"><div class="hint">At least the image's size; the guest grows into it.</div><div class="err" data-err="size_mib"></div></div>
        <div class="row"><label for="cloud-fw">Firmware</label><select id="cloud-fw">${opt('bios', 'BIOS')}${opt('uefi', 'UEFI')}</select></div>
      </div>
      <div class="row" id="cmdline-row"><label for="cmdline">Kernel command line</label><input id="cmdline" placeholder="(the guest's default)"><div class="err" data-err="cmdline"></div></div>
      <div class="row"><label for="disk-mode">Disk</label>
        <select id="disk-mode">${opt('none', 'No disk')}${opt('new', 'New empty disk')}${disks.length ? opt('existing', 'Existing disk image') : ''}</select>
        <div class="inline" id="disk-new" hidden><div class="row"><label for="disk-name">Disk name</label><input id="disk-name"></div><div class="row"><label for="disk-size">Size (MiB)</label><input id="disk-size" type="number" min="1" value="64"></div></div>
        <select id="disk-existing" hidden>${disks.map((d) => opt(d.name, `${d.name} (${mib(d.size)})`)).join('')}</select>
        <div class="err" data-err="disks"></div></div>
      <div class="row" id="bus-row" hidden><label for="bus">Disk bus</label><select id="bus">${opt('virtio', 'virtio (fast; Linux and BSD have the driver)')}${opt('ide', 'IDE (for guests without virtio drivers, such as a Windows installer)')}</select><div class="err" data-err="disks[0].bus"></div></div>
      <div class="row" id="iso-row" hidden><label for="iso">CD/DVD (ISO)</label>
        <select id="iso">${opt('', isos.length ? 'none' : 'none (upload an ISO in Images)')}${isos.map((i) => opt(i.name, `${i.name} (${mib(i.size)})`)).join('')}</select>
        <div class="hint">In a CD-ROM drive: installers and rescue ISOs boot from it, hybrid or not (Windows too); change it on the VM's page.</div></div>
      <div class="row" id="first-row" hidden><label for="first">Boot first from</label><select id="first">${opt('disk', 'the disk')}${opt('iso', 'the ISO')}</select><div class="err" data-err="boot_order"></div></div>
      <div class="row"><label class="check"><input id="network" type="checkbox" checked> Network: a NIC on br0, the host's network</label><div class="err" data-err="network"></div></div>
      <div class="row"><label class="check"><input id="ci-on" type="checkbox"> Provision with cloud-init (cloud images: Debian, Ubuntu, Rocky…)</label></div>
      <fieldset id="ci" hidden><legend>cloud-init</legend>
        <div class="inline">
          <div class="row"><label for="ci-hostname">Host name</label><input id="ci-hostname" placeholder="(the VM's name)"><div class="err" data-err="cloud_init.hostname"></div></div>
          <div class="row"><label for="ci-user">User</label><input id="ci-user" value="admin"><div class="hint">With sudo.</div><div class="err" data-err="cloud_init.user"></div></div>
          <div class="row"><label for="ci-password">Password</label><input id="ci-password" type="password" autocomplete="new-password" placeholder="(SSH keys only)"><div class="hint">For the console; kept only as a hash.</div><div class="err" data-err="cloud_init.password"></div></div>
        </div>
        <div class="row"><label for="ci-keys">SSH public keys</label><textarea id="ci-keys" rows="3" placeholder="ssh-ed25519 AAAA… you@laptop (one per line)"></textarea><div class="err" data-err="cloud_init.ssh_keys"></div></div>
        <div class="row"><label for="ci-net">Address</label><select id="ci-net">${opt('dhcp', 'DHCP')}${opt('static', 'Static')}</select></div>
        <div class="inline" id="ci-static" hidden>
          <div class="row"><label for="ci-address">Address/prefix</label><input id="ci-address" placeholder="192.0.2.10/24"><div class="err" data-err="cloud_init.network.address"></div></div>
          <div class="row"><label for="ci-gateway">Gateway</label><input id="ci-gateway" placeholder="192.0.2.1"><div class="err" data-err="cloud_init.network.gateway"></div></div>
          <div class="row"><label for="ci-dns">DNS servers</label><input id="ci-dns" placeholder="192.0.2.53, 192.0.2.54"><div class="err" data-err="cloud_init.network.dns"></div></div>
        </div>
        <div class="err" data-err="cloud_init"></div>
      </fieldset>
      <div class="row"><label class="check"><input id="autostart" type="checkbox"> Start when kvmos boots</label></div>
      <div class="actions"><button id="create" type="submit">Create</button><button id="create-start" type="button" class="secondary">Create and start</button><span class="muted" id="create-status"></span></div>
    </form>`;
  const f = document.getElementById('vm-form');
  const $ = (s) => f.querySelector(s);
  // The presets set the form the way a new admin wants it, and can be changed.
  const preset = () => {
    const [kind] = $('#source').value.split(':');
    if (kind === 'cloud') {
      $('#ci-on').checked = true; $('#memory').value = Math.max(Number($('#memory').value), 1024);
      const img = disks.find((d) => d.name === $('#cloud-image').value);
      if (img) $('#cloud-size').value = Math.max(10240, Math.ceil(img.size / 1048576));
    }
    if (kind === 'install') {
      $('#disk-mode').value = 'new'; $('#disk-size').value = Math.max(Number($('#disk-size').value), 20480);
      $('#memory').value = Math.max(Number($('#memory').value), 2048); $('#first').value = 'iso';
    }
  };
  $('#source').addEventListener('change', preset);
  $('#cloud-image').addEventListener('change', preset);
  const sync = () => {
    const [kind] = $('#source').value.split(':');
    const cloud = kind === 'cloud';
    const firmware = kind === 'firmware' || kind === 'install' || cloud;
    $('#cloud-row').hidden = !cloud;
    $('#disk-mode').closest('.row').hidden = cloud;
    $('#initrd-row').hidden = !$('#source').value.startsWith('kernel:');
    $('#cmdline-row').hidden = firmware;
    $('#iso-row').hidden = !firmware || cloud;
    $('#first-row').hidden = !firmware || !$('#iso').value || $('#disk-mode').value === 'none';
    $('#disk-new').hidden = $('#disk-mode').value !== 'new';
    $('#bus-row').hidden = !firmware || (!cloud && $('#disk-mode').value === 'none');
    $('#disk-existing').hidden = $('#disk-mode').value !== 'existing';
    $('#ci').hidden = !$('#ci-on').checked;
    $('#ci-static').hidden = $('#ci-net').value !== 'static';
    if (!$('#disk-name').value && $('#name').value) $('#disk-name').placeholder = `${$('#name').value}-disk`;
  };
  ['#source', '#disk-mode', '#name', '#iso', '#ci-on', '#ci-net'].forEach((s) => { $(s).addEventListener('input', sync); $(s).addEventListener('change', sync); });
  sync();
  const submit = async (start) => {
    const [kind, ref] = $('#source').value.split(/:(.*)/);
    const boots = {
      guest: () => ({ type: 'guest', guest: ref }),
      kernel: () => ({ type: 'kernel', kernel: ref, initrd: $('#initrd').value || null }),
      firmware: () => ({ type: 'firmware', firmware: ref }),
      install: () => ({ type: 'firmware', firmware: ref }),
      cloud: () => ({ type: 'firmware', firmware: $('#cloud-fw').value }),
    };
    const firmware = boots[kind]().type === 'firmware';
    const spec = {
      name: $('#name').value.trim(), vcpus: Number($('#vcpus').value), memory_mib: Number($('#memory').value),
      boot: boots[kind](), cmdline: firmware ? null : ($('#cmdline').value.trim() || null),
      disks: [], network: $('#network').checked, autostart: $('#autostart').checked,
      cpu_weight: $('#cpu-weight').value ? Number($('#cpu-weight').value) : undefined,
    };
    if (kind === 'cloud') spec.disks.push({ image: `${spec.name}-disk` });
    else if ($('#disk-mode').value === 'new') spec.disks.push({ image: $('#disk-name').value.trim() || `${spec.name}-disk`, size_mib: Number($('#disk-size').value) });
    else if ($('#disk-mode').value === 'existing') spec.disks.push({ image: $('#disk-existing').value });
    if (firmware && spec.disks.length && $('#bus').value === 'ide') spec.disks[0].bus = 'ide';
    if (firmware && kind !== 'cloud' && $('#iso').value) {
      spec.disks.push({ image: $('#iso').value, read_only: true });
      if ($('#first').value === 'iso' && spec.disks.length === 2) spec.boot_order = [1, 0];
    }
    if ($('#ci-on').checked) {
      const list = (v) => v.split(/[\n,]/).map((x) => x.trim()).filter(Boolean);
      spec.cloud_init = {
        hostname: $('#ci-hostname').value.trim() || null, user: $('#ci-user').value.trim() || 'admin',
        ssh_keys: $('#ci-keys').value.split('\n').map((x) => x.trim()).filter(Boolean),
        password: $('#ci-password').value || null,
        network: $('#ci-net').value === 'static'
          ? { mode: 'static', address: $('#ci-address').value.trim(), gateway: $('#ci-gateway').value.trim() || null, dns: list($('#ci-dns').value) }
          : { mode: 'dhcp' },
      };
    }
    let copied = null;
    try {
      if (kind === 'cloud') copied = await copyCloudImage(f, $('#cloud-image').value, `${spec.name}-disk`, Number($('#cloud-size').value));
      const vm = await api('POST', '/api/v1/vms', spec);
      copied = null;
      if (start) await api('POST', `/api/v1/vms/${vm.id}/actions`, { action: 'start' });
      go(`#/vms/${vm.id}`);
    } catch (e) {
      // A copy made for a VM that was not created is not left behind.
      if (copied) await api('DELETE', `/api/v1/images/${encodeURIComponent(copied)}`).catch(() => {});
      showError(f, e);
    }
  };
  f.onsubmit = (ev) => { ev.preventDefault(); submit(false); };
  $('#create-start').onclick = () => { if (f.reportValidity()) submit(true); };
}

// A VM from a cloud image gets its own copy of the image (a clone task),
// grown to the size asked for; the guest grows into it at first boot.
async function copyCloudImage(form, image, disk, sizeMib) {
  const status = form.querySelector('#create-status');
  const task = await api('POST', `/api/v1/images/${encodeURIComponent(image)}/clone`, { name: disk });
  for (;;) {
    const t = await api('GET', `/api/v1/tasks/${task.id}`);
    if (t.state === 'failed') throw new ApiError(400, { error: t.error });
    if (t.state === 'done') break;
    status.textContent = `Copying ${image}: ${t.total_bytes ? Math.floor((100 * t.done_bytes) / t.total_bytes) : 0}%`;
    await new Promise((r) => setTimeout(r, 500));
  }
  const copy = (await api('GET', '/api/v1/images')).images.find((i) => i.name === disk);
  status.textContent = '';
  if (copy && sizeMib * 1048576 > copy.size) {
    try { await api('POST', `/api/v1/images/${encodeURIComponent(disk)}/grow`, { size_mib: sizeMib }); } catch (e) {
      await api('DELETE', `/api/v1/images/${encodeURIComponent(disk)}`).catch(() => {});
      throw e;
    }
  }
  return disk;
}

function openConsole(id) {
  const box = document.getElementById('terminal');
  term = new window.Terminal({ convertEol: false, cursorBlink: true, fontSize: 14, scrollback: 5000, theme: { background: '#000000' } });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  socket = new WebSocket(`wss://${location.host}/api/v1/vms/${id}/console`);
  socket.binaryType = 'arraybuffer';
  socket.onmessage = (ev) => term.write(new Uint8Array(ev.data));
  socket.onclose = () => { if (term) term.write('\r\n\x1b[90m[console closed]\x1b[0m\r\n'); };
  const enc = new TextEncoder();
  term.onData((d) => { if (socket && socket.readyState === 1) socket.send(enc.encode(d)); });
  term.focus();
}

function openScreen(id, tries = 0) {
  const box = document.getElementById('screen');
  if (!box) return;
  // screen.js is a module, which runs once the page is parsed.
  if (!window.kvmosScreen) {
    if (tries < 50) setTimeout(() => { if (document.getElementById('screen') === box) openScreen(id, tries + 1); }, 100);
    else box.textContent = 'The screen viewer did not load.';
    return;
  }
  const state = document.getElementById('screen-state');
  screen = window.kvmosScreen(box, id, (s) => { state.textContent = s; box.dataset.state = s; });
  const form = document.getElementById('type-form');
  document.getElementById('screen-cad').onclick = () => { screen.ctrlAltDel(); screen.focus(); };
  document.getElementById('screen-full').onclick = () => screen.fullscreen();
  document.getElementById('screen-scale').onclick = (ev) => { ev.target.textContent = screen.toggleScale() ? 'Actual size' : 'Fit to window'; };
  document.getElementById('screen-type').onclick = () => { form.hidden = false; document.getElementById('type-text').focus(); };
  document.getElementById('type-cancel').onclick = () => { form.hidden = true; };
  form.onsubmit = (ev) => {
    ev.preventDefault();
    screen.type(document.getElementById('type-text').value);
    document.getElementById('type-text').value = '';
    form.hidden = true;
    screen.focus();
  };
}

async function vmDetail(id) {
  const [vm, images] = await Promise.all([api('GET', `/api/v1/vms/${id}`), api('GET', '/api/v1/images')]);
  const s = vm.spec;
  // The CD/DVD drives: the VM's ISOs, each in a drive of its own.
  const isos = images.images.filter((i) => i.kind === 'iso').map((i) => i.name);
  const drives = s.disks.map((d, i) => [d, i]).filter(([d]) => !d.size_mib && isos.includes(d.image));
  const boot = {
    guest: () => `bundled guest ${s.boot.guest}`,
    kernel: () => `kernel ${s.boot.kernel}${s.boot.initrd ? ` + ${s.boot.initrd}` : ''}`,
    firmware: () => `${s.boot.firmware === 'uefi' ? 'UEFI (OVMF)' : 'BIOS (SeaBIOS)'} from the disks`,
  }[s.boot.type]();
  // Firmware boots: the disks in boot order, the configured ones first.
  const order = (s.boot_order || []).concat(s.disks.map((_, i) => i).filter((i) => !(s.boot_order || []).includes(i)));
  app.innerHTML = `
    <h1>${esc(vm.name)} <span id="vm-state">${stateBadge(vm.state)}</span></h1>
    <div class="card"><div class="actions" id="vm-actions">${vmButtons(vm)}
      ${vm.state === 'running' ? `<button class="secondary" data-action="reboot" data-vm="${esc(id)}">Reboot</button><button class="secondary" data-action="pause" data-vm="${esc(id)}">Pause</button>` : ''}
      ${vm.state === 'stopped' ? `<button class="secondary" id="clone-vm">Clone</button><button class="danger" id="delete-vm">Delete</button>` : ''}</div></div>
    ${s.boot.type === 'firmware' ? `<div class="card"><h2>Screen</h2>${vm.state === 'stopped' ? '<p class="muted">Start the VM to see its screen.</p>' : `
      <div class="actions screen-tools">
        <button class="secondary small" id="screen-cad">Ctrl-Alt-Del</button>
        <button class="secondary small" id="screen-type">Type text…</button>
        <button class="secondary small" id="screen-full">Full screen</button>
        <button class="secondary small" id="screen-scale">Actual size</button>
        <span class="muted" id="screen-state">connecting…</span>
      </div>
      <div id="screen" class="screen"></div>
      <form id="type-form" hidden><textarea id="type-text" rows="3" placeholder="Text to type into the VM"></textarea>
        <div class="actions"><button type="submit" id="type-send">Type it</button><button type="button" class="ghost" id="type-cancel">Cancel</button></div></form>`}</div>` : ''}
    <div class="card"><h2>Console</h2><div id="console-area">${vm.state === 'stopped' ? '<p class="muted">Start the VM to see its serial console.</p>' : '<div id="terminal" class="terminal"></div>'}</div></div>
    <div class="grid">
      <div class="card"><h2>Configuration</h2><table>
        <tr><th>vCPUs</th><td>${s.vcpus}${s.cpu_weight ? ` <span class="muted">· CPU weight ${s.cpu_weight}</span>` : ''}</td></tr><tr><th>Memory</th><td>${s.memory_mib} MiB</td></tr>
        ${vm.usage ? `<tr><th>In use now</th><td id="vm-usage">${mib(vm.usage.memory_bytes)} of ${vm.usage.memory_max_bytes ? mib(vm.usage.memory_max_bytes) : 'no limit'} · CPU ${(vm.usage.cpu_usec / 1e6).toFixed(1)} s</td></tr>` : ''}
        <tr><th>Boot</th><td>${esc(boot)}</td></tr>
        ${s.boot.type === 'firmware' ? `<tr><th>Boot order</th><td><ol id="boot-order">${order.map((i, n) => `<li>${esc(s.disks[i].image)}${s.disks[i].read_only ? ' <span class="muted">(read-only)</span>' : ''}${n > 0 && vm.state === 'stopped' ? ` <button class="secondary small" data-first="${i}">Boot first</button>` : ''}</li>`).join('')}</ol></td></tr>` : `<tr><th>Command line</th><td class="mono">${esc(s.cmdline || '(default)')}</td></tr>`}
        <tr><th>Disks</th><td id="vm-disks">${esc(s.disks.map((d) => d.image + (d.bus === 'ide' ? ' (IDE)' : '')).join(', ') || 'none')}</td></tr>
        ${drives.length ? `<tr><th>CD/DVD</th><td>${drives.map(([d, i]) => `<div class="actions medium" data-drive="${i}">
          <select aria-label="ISO in drive ${i}">${isos.map((n) => `<option value="${esc(n)}" ${n === d.image ? 'selected' : ''}>${esc(n)}</option>`).join('')}</select>
          <button class="secondary small" data-insert="${i}">${vm.state === 'stopped' ? 'Use this ISO' : 'Insert'}</button>
          ${vm.state !== 'stopped' ? `<button class="secondary small" data-eject="${i}">Eject</button>` : ''}</div>`).join('')}</td></tr>` : ''}
        <tr><th>Network</th><td>${s.network ? `br0 · <span class="mono">${esc(vm.mac)}</span>` : 'none'}</td></tr>
        ${s.cloud_init ? `<tr><th>cloud-init</th><td>user <b>${esc(s.cloud_init.user)}</b>, ${s.cloud_init.ssh_keys.length} SSH key(s)${s.cloud_init.password_hash ? ', a password' : ''}, ${s.cloud_init.network.mode === 'static' ? esc(s.cloud_init.network.address) : 'DHCP'}
          <details id="ci-seed"><summary>What the guest gets</summary><div class="muted">Loading…</div></details></td></tr>` : ''}
        <tr><th>Autostart</th><td><label class="check"><input type="checkbox" id="autostart" ${s.autostart ? 'checked' : ''} ${vm.state !== 'stopped' ? 'disabled title="Stop the VM to change it"' : ''}> at boot</label></td></tr>
      </table></div>
      <div class="card"><h2>Runs</h2><div class="table-wrap"><table id="runs"><thead><tr><th>Started</th><th>Ended</th><th>Exit</th></tr></thead><tbody>
        ${vm.runs.slice().reverse().map((r) => `<tr><td>${when(r.started)}</td><td>${when(r.ended)}</td><td>${esc(r.ended ? r.reason || `code ${r.exit_code}` : 'running')}</td></tr>`).join('') || '<tr><td colspan="3" class="muted">Never started.</td></tr>'}
      </tbody></table></div></div>
    </div>`;
  wireActions(app.querySelector('#vm-actions'));
  const clone = app.querySelector('#clone-vm');
  if (clone) clone.onclick = async () => {
    const name = prompt(`Name of the clone of ${vm.name} (its disks are copied)`, `${vm.name}-copy`);
    if (!name) return;
    try { await api('POST', `/api/v1/vms/${id}/clone`, { name: name.trim() }); toast(`Cloning to ${name}: see Images → Tasks`); } catch (e) { toast(e.message, true); }
  };
  const del = app.querySelector('#delete-vm');
  if (del) del.onclick = async () => {
    if (!confirm(`Delete ${vm.name}? Its disk images stay in Images.`)) return;
    try { await api('DELETE', `/api/v1/vms/${id}`); go('#/'); } catch (e) { toast(e.message, true); }
  };
  app.querySelectorAll('[data-first]').forEach((b) => {
    b.onclick = async () => {
      const first = Number(b.dataset.first);
      try { await api('PUT', `/api/v1/vms/${id}`, { ...s, boot_order: [first, ...order.filter((i) => i !== first)] }); route(); } catch (e) { toast(e.message, true); }
    };
  });
  const medium = async (drive, image) => {
    try {
      await api('PUT', `/api/v1/vms/${id}/disks/${drive}/medium`, { image });
      toast(image ? `${image} is in the drive` : 'Ejected: the guest sees an empty drive until the VM stops');
      if (image) route();
    } catch (e) { toast(e.message, true); }
  };
  app.querySelectorAll('[data-insert]').forEach((b) => {
    b.onclick = () => medium(b.dataset.insert, b.closest('[data-drive]').querySelector('select').value);
  });
  app.querySelectorAll('[data-eject]').forEach((b) => { b.onclick = () => medium(b.dataset.eject, null); });
  const seedBox = app.querySelector('#ci-seed');
  if (seedBox) seedBox.ontoggle = async () => {
    if (!seedBox.open) return;
    try {
      const seed = await api('GET', `/api/v1/vms/${id}/cloud-init`);
      seedBox.querySelector('div').outerHTML = ['meta_data', 'user_data', 'network_config'].filter((k) => seed[k])
        .map((k) => `<h3>${k.replace('_', '-')}</h3><pre class="mono seed">${esc(seed[k])}</pre>`).join('');
    } catch (e) { toast(e.message, true); }
  };
  const auto = app.querySelector('#autostart');
  auto.onchange = async () => {
    try { await api('PUT', `/api/v1/vms/${id}`, { ...s, autostart: auto.checked }); toast('Saved'); } catch (e) { toast(e.message, true); auto.checked = !auto.checked; }
  };
  if (vm.state !== 'stopped') openConsole(id);
  if (vm.state !== 'stopped' && s.boot.type === 'firmware') openScreen(id);
  let last = vm.state;
  timer = setInterval(async () => {
    try {
      const now = await api('GET', `/api/v1/vms/${id}`);
      if (now.state !== last) { last = now.state; route(); }
    } catch (e) { /* next navigation shows it */ }
  }, 2000);
}

// The KVM switch (switch.js, a module that hands over one function).
async function switchPage(tries = 0) {
  if (!window.kvmosSwitch) {
    if (tries > 50) { app.innerHTML = '<div class="card err">The switch did not load.</div>'; return; }
    await new Promise((r) => setTimeout(r, 100));
    return switchPage(tries + 1);
  }
  const settings = await api('GET', '/api/v1/switch/settings');
  if (location.hash !== '#/switch') return;
  switchView = window.kvmosSwitch(app, { settings, api, toast });
}

// The task list (downloads, conversions, clones): progress, result, log.
function taskRows(tasks) {
  const pct = (t) => (t.total_bytes ? Math.floor((100 * t.done_bytes) / t.total_bytes) : 0);
  return tasks.map((t) => `<tr data-task="${esc(t.id)}"><td>${esc(t.kind)}</td><td>${esc(t.target)}</td>
    <td>${t.state === 'running' ? `<progress value="${pct(t)}" max="100"></progress> ${pct(t)}%` : stateBadge(t.state === 'done' ? 'done' : 'failed')}</td>
    <td>${when(t.started)}</td><td class="hide-narrow muted">${esc(t.error || t.log[t.log.length - 1] || '')}</td>
    <td>${t.state === 'running' && t.stoppable && !t.stopping ? `<button class="secondary small" data-stop="${esc(t.id)}">Stop</button>` : ''}</td></tr>`).join('')
    || '<tr><td colspan="6" class="muted">No tasks yet.</td></tr>';
}

async function imagesPage() {
  const [list, tasks] = await Promise.all([api('GET', '/api/v1/images'), api('GET', '/api/v1/tasks')]);
  app.innerHTML = `
    <h1>Images</h1>
    <div class="card"><h2>Upload</h2><form id="upload-form">
      <div class="inline">
        <div class="row"><label for="file">File</label><input id="file" type="file" required><div class="err" data-err="file"></div></div>
        <div class="row"><label for="up-name">Name</label><input id="up-name" required><div class="err" data-err="name"></div></div>
        <div class="row"><label for="kind">Kind</label><select id="kind"><option value="disk">Disk (raw)</option><option value="iso">ISO (CD/DVD image)</option><option value="kernel">Kernel</option><option value="initrd">Initrd</option></select><div class="err" data-err="kind"></div></div>
      </div>
      <progress id="progress" value="0" max="100" hidden></progress>
      <div class="hint" id="upload-status">Up to ${mib(list.max_upload)}.</div>
      <button type="submit" id="upload">Upload</button></form></div>
    <div class="card"><h2>Import from a URL</h2><form id="import-form">
      <div class="row"><label for="im-url">URL</label><input id="im-url" required placeholder="https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"><div class="hint">The panel downloads it itself, resuming if the connection breaks; qcow2 becomes a raw disk.</div><div class="err" data-err="url"></div></div>
      <div class="inline">
        <div class="row"><label for="im-name">Name</label><input id="im-name"><div class="err" data-err="name"></div></div>
        <div class="row"><label for="im-kind">Kind</label><select id="im-kind"><option value="">From its content</option><option value="disk">Disk</option><option value="iso">ISO (CD/DVD image)</option><option value="kernel">Kernel</option><option value="initrd">Initrd</option></select><div class="err" data-err="kind"></div></div>
        <div class="row"><label for="im-sum">SHA-256 or SHA-512</label><input id="im-sum" class="mono" placeholder="(optional, from the SHA512SUMS file)"><div class="err" data-err="checksum"></div></div>
      </div>
      <button type="submit" id="import">Download</button></form>
      <details id="trusted-ca"><summary>Certificate authorities trusted for downloads</summary>
        <form id="ca-form"><div class="hint">HTTPS servers are checked against Mozilla's root certificates. For a mirror whose certificate your company's CA signed, paste that CA here (PEM).</div>
        <textarea id="ca-pem" rows="5" class="mono" placeholder="-----BEGIN CERTIFICATE-----"></textarea><div class="err" data-err="pem"></div>
        <button type="submit" class="secondary" id="ca-save">Save</button> <span class="muted" id="ca-count"></span></form></details></div>
    <div class="card"><h2>New empty disk</h2><form id="disk-form" class="inline">
      <div class="row"><label for="disk-name">Name</label><input id="disk-name" required><div class="err" data-err="name"></div></div>
      <div class="row"><label for="disk-size">Size (MiB)</label><input id="disk-size" type="number" min="1" value="1024"><div class="err" data-err="size_mib"></div></div>
      <div class="row" style="justify-content:flex-end"><button type="submit">Create</button></div></form></div>
    <div class="card"><h2>Images</h2><div class="table-wrap"><table id="image-table"><thead><tr><th>Name</th><th>Kind</th><th>Size</th><th class="hide-narrow">SHA-256</th><th></th></tr></thead><tbody>
      ${list.guests.map((g) => `<tr><td>${esc(g.name)}</td><td>bundled guest</td><td>—</td><td class="hide-narrow muted">${esc(g.description)}</td><td></td></tr>`).join('')}
      ${list.images.map((i) => `<tr><td>${esc(i.name)}</td><td>${esc(i.kind)}${i.converted_from ? ` <span class="muted">(from ${esc(i.converted_from)})</span>` : ''}${i.cloned_from ? ` <span class="muted">(copy of ${esc(i.cloned_from)})</span>` : ''}</td><td>${mib(i.size)}</td><td class="hide-narrow mono">${esc(i.sha256 ? i.sha256.slice(0, 16) + '…' : '—')}</td><td class="actions">${i.kind === 'disk' ? `<button class="secondary small" data-clone="${esc(i.name)}">Clone</button><button class="secondary small" data-grow="${esc(i.name)}" data-size="${i.size}">Grow</button>` : ''}<button class="danger small" data-delete="${esc(i.name)}">Delete</button></td></tr>`).join('')}
    </tbody></table></div></div>
    <div class="card"><h2>Tasks</h2><div class="table-wrap"><table id="task-table"><thead><tr><th>Task</th><th>Target</th><th>State</th><th>Started</th><th class="hide-narrow">Last message</th><th></th></tr></thead>
      <tbody>${taskRows(tasks)}</tbody></table></div></div>`;
  const f = document.getElementById('upload-form');
  const file = f.querySelector('#file');
  file.onchange = () => { if (!f.querySelector('#up-name').value && file.files[0]) f.querySelector('#up-name').value = file.files[0].name.toLowerCase().replace(/[^a-z0-9._-]/g, '-'); };
  f.onsubmit = (ev) => {
    ev.preventDefault();
    const name = f.querySelector('#up-name').value.trim();
    const xhr = new XMLHttpRequest();
    const bar = f.querySelector('#progress');
    bar.hidden = false; bar.value = 0;
    xhr.upload.onprogress = (p) => { if (p.lengthComputable) bar.value = (100 * p.loaded) / p.total; f.querySelector('#upload-status').textContent = `${mib(p.loaded)} of ${mib(p.total)}`; };
    xhr.onload = () => {
      const body = xhr.responseText ? JSON.parse(xhr.responseText) : {};
      if (xhr.status === 201) { toast(`Uploaded ${name}; SHA-256 ${body.sha256}`); route(); } else { bar.hidden = true; showError(f, new ApiError(xhr.status, body)); }
    };
    xhr.onerror = () => { bar.hidden = true; toast('The upload failed (connection lost)', true); };
    xhr.open('PUT', `/api/v1/images/${encodeURIComponent(name)}?kind=${f.querySelector('#kind').value}`);
    xhr.setRequestHeader('X-CSRF-Token', csrf);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.send(file.files[0]);
  };
  const im = document.getElementById('import-form');
  im.querySelector('#im-url').oninput = () => {
    const last = im.querySelector('#im-url').value.split(/[?#]/)[0].split('/').pop() || '';
    im.querySelector('#im-name').placeholder = last.toLowerCase().replace(/\.(qcow2|img|raw)$/, '').replace(/[^a-z0-9._-]/g, '-');
  };
  im.onsubmit = async (ev) => {
    ev.preventDefault();
    const name = im.querySelector('#im-name').value.trim() || im.querySelector('#im-name').placeholder;
    try {
      await api('POST', '/api/v1/images/import', { name, url: im.querySelector('#im-url').value.trim(), kind: im.querySelector('#im-kind').value || null, checksum: im.querySelector('#im-sum').value.trim() || null });
      toast(`Downloading ${name}: see Tasks`); route();
    } catch (e) { showError(im, e); }
  };
  const ca = document.getElementById('ca-form');
  const showCa = (t) => { ca.querySelector('#ca-pem').value = t.pem; ca.querySelector('#ca-count').textContent = `${t.count} trusted`; };
  document.getElementById('trusted-ca').addEventListener('toggle', async () => { try { showCa(await api('GET', '/api/v1/settings/trusted-ca')); } catch (e) { toast(e.message, true); } }, { once: true });
  ca.onsubmit = async (ev) => {
    ev.preventDefault();
    try { showCa(await api('PUT', '/api/v1/settings/trusted-ca', { pem: ca.querySelector('#ca-pem').value })); ca.querySelector('.err').textContent = ''; toast('Saved'); } catch (e) { showError(ca, e); }
  };
  const d = document.getElementById('disk-form');
  d.onsubmit = async (ev) => {
    ev.preventDefault();
    try { await api('POST', '/api/v1/images/disks', { name: d.querySelector('#disk-name').value.trim(), size_mib: Number(d.querySelector('#disk-size').value) }); route(); } catch (e) { showError(d, e); }
  };
  app.querySelectorAll('[data-clone]').forEach((b) => {
    b.onclick = async () => {
      const name = prompt(`Name of the copy of ${b.dataset.clone}`, `${b.dataset.clone}-copy`);
      if (!name) return;
      try { await api('POST', `/api/v1/images/${encodeURIComponent(b.dataset.clone)}/clone`, { name: name.trim() }); toast(`Copying to ${name}: see Tasks`); route(); } catch (e) { toast(e.message, true); }
    };
  });
  app.querySelectorAll('[data-grow]').forEach((b) => {
    b.onclick = async () => {
      const now = Math.ceil(Number(b.dataset.size) / 1048576);
      const size = prompt(`New size of ${b.dataset.grow} in MiB (now ${now}; disks only grow)`, String(now * 2));
      if (!size) return;
      try { await api('POST', `/api/v1/images/${encodeURIComponent(b.dataset.grow)}/grow`, { size_mib: Number(size) }); toast(`${b.dataset.grow} is ${size} MiB now`); route(); } catch (e) { toast(e.message, true); }
    };
  });
  // Stop buttons, in rows the refresh below replaces.
  document.getElementById('task-table').onclick = async (ev) => {
    const id = ev.target.dataset && ev.target.dataset.stop;
    if (!id) return;
    try { await api('DELETE', `/api/v1/tasks/${encodeURIComponent(id)}`); ev.target.remove(); } catch (e) { toast(e.message, true); }
  };
  // Running tasks: refresh the list until they end.
  if (tasks.some((t) => t.state === 'running')) {
    timer = setInterval(async () => {
      try {
        const now = await api('GET', '/api/v1/tasks');
        document.querySelector('#task-table tbody').innerHTML = taskRows(now);
        if (!now.some((t) => t.state === 'running')) route();
      } catch (e) { /* next navigation shows it */ }
    }, 1000);
  }
  app.querySelectorAll('[data-delete]').forEach((b) => {
    b.onclick = async () => {
      if (!confirm(`Delete the image ${b.dataset.delete}?`)) return;
      try { await api('DELETE', `/api/v1/images/${encodeURIComponent(b.dataset.delete)}`); route(); } catch (e) { toast(e.message, true); }
    };
  });
}

async function auditPage() {
  const entries = await api('GET', '/api/v1/audit?limit=500');
  app.innerHTML = `<h1>Audit log</h1><div class="card table-wrap"><table id="audit-table"><thead><tr><th>When</th><th>Who</th><th class="hide-narrow">From</th><th>Action</th><th>Target</th><th>Outcome</th></tr></thead><tbody>
    ${entries.map((e) => `<tr><td>${when(e.time)}</td><td>${esc(e.who)}</td><td class="hide-narrow mono">${esc(e.from)}</td><td>${esc(e.action)}</td><td>${esc(e.target)}</td><td>${e.outcome === 'ok' ? 'ok' : `<span class="err">${esc(e.outcome)}</span>`}</td></tr>`).join('')}
  </tbody></table></div>`;
}

async function settingsPage() {
  const [settings, tokens, sw] = await Promise.all([api('GET', '/api/v1/host/settings'), api('GET', '/api/v1/tokens'), api('GET', '/api/v1/switch/settings')]);
  const net = settings.network;
  const st = net.mode === 'static' ? net : { address: '', prefix: 24, gateway: '', dns: '' };
  app.innerHTML = `
    <h1>Settings</h1>
    <div class="card"><h2>Host network</h2><p class="hint">Saved on the data disk and applied at the next boot.</p><form id="host-form">
      <div class="inline"><div class="row"><label for="hostname">Hostname</label><input id="hostname" value="${esc(settings.hostname || '')}"><div class="err" data-err="hostname"></div></div>
      <div class="row"><label for="ntp">NTP server</label><input id="ntp" value="${esc(settings.ntp || '')}" placeholder="192.0.2.123"><div class="err" data-err="ntp"></div></div></div>
      <div class="row"><label for="mode">Address</label><select id="mode"><option value="dhcp">DHCP</option><option value="static" ${net.mode === 'static' ? 'selected' : ''}>Static</option></select></div>
      <div class="inline" id="static"><div class="row"><label for="address">IP address</label><input id="address" value="${esc(st.address)}"><div class="err" data-err="network.address"></div></div>
        <div class="row"><label for="prefix">Prefix</label><input id="prefix" type="number" min="1" max="32" value="${st.prefix}"><div class="err" data-err="network.prefix"></div></div>
        <div class="row"><label for="gateway">Gateway</label><input id="gateway" value="${esc(st.gateway)}"><div class="err" data-err="network.gateway"></div></div>
        <div class="row"><label for="dns">DNS</label><input id="dns" value="${esc(st.dns || '')}"><div class="err" data-err="network.dns"></div></div></div>
      <button type="submit">Save</button></form></div>
    <div class="card"><h2>KVM switch</h2><p class="hint">The hotkeys of the Switch page. They never reach a guest.</p><form id="switch-form" class="inline">
      <div class="row"><label for="sw-mods">Hotkey modifiers</label><select id="sw-mods">${['ctrl+alt', 'ctrl+shift', 'alt+shift', 'ctrl+alt+shift'].map((m) => `<option value="${m}" ${sw.modifiers === m ? 'selected' : ''}>${m.split('+').map((k) => k[0].toUpperCase() + k.slice(1)).join('+')} + 1…9, ←, →</option>`).join('')}</select><div class="err" data-err="modifiers"></div></div>
      <div class="row"><label for="sw-tap">Next tile</label><select id="sw-tap">${[['scrolllock', 'Scroll Lock twice'], ['pause', 'Pause twice'], ['off', 'no double tap']].map(([v, l]) => `<option value="${v}" ${sw.double_tap === v ? 'selected' : ''}>${l}</option>`).join('')}</select><div class="err" data-err="double_tap"></div></div>
      <div class="row" style="justify-content:flex-end"><button type="submit" id="switch-save">Save</button></div></form></div>
    <div class="card"><h2>Password</h2><form id="pw-form" class="inline">
      <div class="row"><label for="current">Current password</label><input id="current" type="password" autocomplete="current-password" required><div class="err" data-err="current"></div></div>
      <div class="row"><label for="new">New password</label><input id="new" type="password" autocomplete="new-password" required minlength="10"><div class="err" data-err="password"></div></div>
      <div class="row" style="justify-content:flex-end"><button type="submit">Change</button></div></form></div>
    <div class="card"><h2>API tokens</h2><p class="hint">For scripts: <code>Authorization: Bearer &lt;token&gt;</code>. A token is shown once.</p>
      <table id="token-table"><tbody>${tokens.map((t) => `<tr><td>${esc(t.name)}</td><td>${when(t.created)}</td><td><button class="danger" data-revoke="${esc(t.id)}">Revoke</button></td></tr>`).join('') || '<tr><td class="muted">No tokens.</td></tr>'}</tbody></table>
      <form id="token-form" class="inline" style="margin-top:.8rem"><div class="row"><label for="token-name">Name</label><input id="token-name" required><div class="err" data-err="name"></div></div><div class="row" style="justify-content:flex-end"><button type="submit">Create token</button></div></form>
      <div id="token-secret" class="notice" hidden></div></div>
    <div class="card"><h2>TLS certificate</h2><p class="hint">Replace the self-signed certificate with your own (PEM).</p><form id="cert-form">
      <div class="row"><label for="cert">Certificate chain</label><textarea id="cert" required></textarea><div class="err" data-err="cert_pem"></div></div>
      <div class="row"><label for="key">Private key</label><textarea id="key" required></textarea><div class="err" data-err="key_pem"></div></div>
      <button type="submit">Install</button></form></div>
    <div class="card"><h2>Power</h2><p class="hint">Running VMs are shut down gracefully first.</p><div class="actions"><button class="secondary" id="reboot-host">Reboot kvmos</button><button class="danger" id="shutdown-host">Shut down kvmos</button></div></div>`;
  const h = document.getElementById('host-form');
  const $ = (s) => h.querySelector(s);
  const sync = () => { $('#static').hidden = $('#mode').value !== 'static'; };
  $('#mode').onchange = sync; sync();
  h.onsubmit = async (ev) => {
    ev.preventDefault();
    const network = $('#mode').value === 'dhcp' ? { mode: 'dhcp' } : { mode: 'static', address: $('#address').value.trim(), prefix: Number($('#prefix').value), gateway: $('#gateway').value.trim(), dns: $('#dns').value.trim() || null };
    try { await api('PUT', '/api/v1/host/settings', { hostname: $('#hostname').value.trim() || null, network, ntp: $('#ntp').value.trim() || null }); toast('Saved; applied at the next boot'); } catch (e) { showError(h, e); }
  };
  const swf = document.getElementById('switch-form');
  swf.onsubmit = async (ev) => {
    ev.preventDefault();
    try { await api('PUT', '/api/v1/switch/settings', { ...sw, modifiers: swf.querySelector('#sw-mods').value, double_tap: swf.querySelector('#sw-tap').value }); toast('Saved'); } catch (e) { showError(swf, e); }
  };
  const pw = document.getElementById('pw-form');
  pw.onsubmit = async (ev) => {
    ev.preventDefault();
    try { await api('PUT', '/api/v1/host/password', { current: pw.querySelector('#current').value, new: pw.querySelector('#new').value }); csrf = null; toast('Password changed; log in again'); go('#/login'); } catch (e) { showError(pw, e); }
  };
  const tf = document.getElementById('token-form');
  tf.onsubmit = async (ev) => {
    ev.preventDefault();
    try {
      const t = await api('POST', '/api/v1/tokens', { name: tf.querySelector('#token-name').value.trim() });
      await settingsPage();
      const box = document.getElementById('token-secret');
      box.hidden = false; box.innerHTML = `Token <b>${esc(t.token.name)}</b>: <code>${esc(t.secret)}</code><br><span class="hint">Copy it now; it is not shown again.</span>`;
    } catch (e) { showError(tf, e); }
  };
  app.querySelectorAll('[data-revoke]').forEach((b) => { b.onclick = async () => { if (confirm('Revoke this token?')) { await api('DELETE', `/api/v1/tokens/${b.dataset.revoke}`); route(); } }; });
  const cf = document.getElementById('cert-form');
  cf.onsubmit = async (ev) => {
    ev.preventDefault();
    try { await api('PUT', '/api/v1/host/certificate', { cert_pem: cf.querySelector('#cert').value, key_pem: cf.querySelector('#key').value }); toast('Certificate installed; reload the page'); } catch (e) { showError(cf, e); }
  };
  const power = async (action, question) => {
    if (!confirm(question)) return;
    try { await api('POST', '/api/v1/host/power', { action }); toast(`kvmos is going to ${action === 'reboot' ? 'reboot' : 'shut down'}`); } catch (e) { toast(e.message, true); }
  };
  document.getElementById('reboot-host').onclick = () => power('reboot', 'Reboot kvmos? Running VMs are shut down first.');
  document.getElementById('shutdown-host').onclick = () => power('shutdown', 'Shut down kvmos? Running VMs are shut down first, and the server powers off.');
}

document.getElementById('logout').onclick = async () => {
  try { await api('POST', '/api/v1/session/logout'); } catch (e) { /* gone anyway */ }
  csrf = null; go('#/login');
};
window.addEventListener('hashchange', route);
route();
