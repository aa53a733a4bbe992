//! The `slipway` command line: argument parsing and printing only; the work is in the
//! library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use slipway::cluster::Cluster;
use slipway::pipeline;
use slipway::pki::EnsureOptions;
use slipway::profile::DataDir;

/// Immutable OS images for bare-metal Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "slipway", version, about)]
struct Cli {
    /// Directory holding profiles/ and overlays/ [default: $SLIPWAY_DATA_DIR, else the
    /// source tree slipway was built from]
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print a machine-readable JSON summary on stdout
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check a cluster definition and print every problem found
    Check {
        /// The cluster definition
        cluster: PathBuf,
    },
    /// Generate the cluster PKI once, or re-issue what the cluster definition changed
    Secrets {
        /// The cluster definition
        cluster: PathBuf,
        /// Secrets directory [default: secrets/ beside CLUSTER]
        #[arg(long, value_name = "DIR")]
        secrets: Option<PathBuf>,
        /// Also re-issue leaf certificates that expire within this many days
        #[arg(long, value_name = "DAYS")]
        renew_within_days: Option<u32>,
    },
    /// Build an image profile's root filesystem as a reproducible tar plus an SPDX SBOM
    Rootfs {
        /// Image profile name (profiles/NAME.toml)
        profile: String,
        /// Output tar file; the SBOM is written beside it as NAME.spdx.json
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        debian: DebianArgs,
    },
    /// Download an image profile's packages into the cache (resolving first if needed)
    Fetch {
        /// Profiles to fetch [default: base, control-plane, worker]
        profiles: Vec<String>,
        /// Also fetch what slipway.lock pins at VERSION of Kubernetes for them (binaries and
        /// images), so that a build needs no network
        #[arg(long, value_name = "VERSION")]
        kubernetes: Vec<String>,
        #[command(flatten)]
        debian: DebianArgs,
    },
    /// Pull container images pinned by digest (REGISTRY/REPO[:TAG]@sha256:HEX), their
    /// linux/amd64 manifest, config and layers verified, into the download cache
    Pull {
        /// Image references
        #[arg(required = true)]
        images: Vec<String>,
        /// Download cache [default: $SLIPWAY_CACHE, $XDG_CACHE_HOME/slipway or ~/.cache/slipway]
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Resolve image profiles against their mirror and rewrite the lock file
    Lock {
        /// Profiles to resolve [default: base, control-plane, worker]
        profiles: Vec<String>,
        /// Also pin the profiles' Kubernetes binaries at VERSION (e.g. v1.34.2) from their
        /// published SHA-512 checksums (the release server, or --kube-artifacts) and their
        /// [kubernetes] images by the digest each tag names in its registry
        #[arg(long, value_name = "VERSION")]
        kubernetes: Vec<String>,
        #[command(flatten)]
        debian: DebianArgs,
    },
    /// Render every node's files and Ignition config into DIR/nodes
    Render {
        /// The cluster definition
        cluster: PathBuf,
        /// Output directory
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Secrets directory [default: secrets/ beside CLUSTER]
        #[arg(long, value_name = "DIR")]
        secrets: Option<PathBuf>,
    },
    /// Build bootable disks: DIR/images/ROLE.{raw,qcow2}, DIR/nodes/NAME/disk.raw and
    /// DIR/manifest.json (also renders every node, as `render` does)
    Build {
        /// The cluster definition
        cluster: PathBuf,
        /// Output directory
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Secrets directory [default: secrets/ beside CLUSTER]
        #[arg(long, value_name = "DIR")]
        secrets: Option<PathBuf>,
        /// The statically linked slipway-init for the initramfs [default: slipway-init
        /// beside this binary, else ../init/slipway-init (where `make init` puts it)]
        #[arg(long, value_name = "FILE", env = "SLIPWAY_INIT")]
        init: Option<PathBuf>,
        /// Skip the qcow2 copies of the role images
        #[arg(long)]
        no_qcow2: bool,
        #[command(flatten)]
        debian: DebianArgs,
    },
    /// Write a node's install ISO (BMC virtual media, CD, or USB stick) from a build's
    /// output: it installs the node's disk and powers off
    Iso {
        /// The cluster definition
        cluster: PathBuf,
        /// The `slipway build` output directory
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The node to install
        #[arg(long, value_name = "NAME")]
        node: String,
        /// Where to write the ISO [default: DIR/nodes/NAME/install.iso]
        #[arg(long, value_name = "FILE")]
        iso: Option<PathBuf>,
    },
    /// Boot a build's nodes under QEMU on a private network with the cluster's own
    /// addresses, and test them (no root needed)
    Vm {
        #[command(subcommand)]
        cmd: VmCmd,
    },
    /// Serve PXE artifacts and per-MAC Ignition configs from a build's output over HTTP
    Serve {
        /// A `slipway build` output directory
        dir: PathBuf,
        /// Address and port to listen on
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
        /// Reimage NODE keeping its state partition (etcd, containerd, kubelet data and
        /// the first boot's configuration) instead of wiping it; repeatable
        #[arg(long, value_name = "NODE")]
        keep_state: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum VmCmd {
    /// Boot every node of a build (or --nodes) and wait until each reports it runs
    Up {
        /// A `slipway build` output directory
        out: PathBuf,
        /// Only these nodes (repeatable)
        #[arg(long = "node", value_name = "NAME")]
        nodes: Vec<String>,
        /// The cluster definition the build was made from, to check OUT is its build
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
        /// The private key for SSH to the admin user [default: ~/.ssh/id_ed25519,
        /// id_ecdsa or id_rsa, whichever the cluster lets in]
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// Memory per node in MiB [default: 768; 2048 for control-plane nodes whose image
        /// carries Kubernetes]
        #[arg(long, value_name = "MIB")]
        memory: Option<u32>,
        /// No RNG device in the machines (the guest then seeds its own pool)
        #[arg(long)]
        no_rng: bool,
        /// QEMU CPU model [default: host under KVM, qemu64 under TCG; qemu64 has no RDRAND, max emulates it]
        #[arg(long, value_name = "MODEL")]
        cpu: Option<String>,
        /// Return once the machines are started, without waiting for them
        #[arg(long)]
        no_wait: bool,
        /// Seconds to wait for every node
        #[arg(long, default_value_t = 900)]
        timeout: u64,
    },
    /// Show every node's state and the VIP's holder
    Status { out: PathBuf },
    /// SSH to NODE as the cluster's admin user (a shell, or CMD)
    Ssh {
        out: PathBuf,
        node: String,
        /// The command to run [default: a login shell]
        #[arg(trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// This terminal on NODE's serial console (^] leaves)
    Console { out: PathBuf, node: String },
    /// Pull NODE's plug (or press its power button with --graceful)
    PowerOff {
        out: PathBuf,
        node: String,
        #[arg(long)]
        graceful: bool,
    },
    /// Power NODE on again (its disk keeps its state)
    PowerOn {
        out: PathBuf,
        node: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Check the cluster that is up: nodes running, VIP, HAProxy, firewall, etcd,
    /// Kubernetes; exit status 1 on a failed check
    Test {
        out: PathBuf,
        /// Also power off the VIP's holder and measure the failover
        #[arg(long)]
        failover: bool,
        /// Write a JUnit XML report here
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
    },
    /// Stop everything the session started and remove it (overlays, logs, network)
    Down { out: PathBuf },
}

/// `slipway vm ...`.
fn vm(cmd: VmCmd, json: bool) -> Result<()> {
    use slipway::vm::session::{Session, UpOptions};
    use std::time::Duration;
    let print = |st: &slipway::vm::session::Status| -> Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(st)?);
        } else {
            table(st);
        }
        Ok(())
    };
    fn table(st: &slipway::vm::session::Status) {
        println!(
            "{:<10} {:<15} {:<10} {:>8}  console",
            "node", "address", "state", "running"
        );
        for n in &st.nodes {
            println!(
                "{:<10} {:<15} {:<10} {:>8}  {}",
                n.name,
                n.ip,
                n.state,
                n.running_after
                    .map(|t| format!("{t:.1} s"))
                    .unwrap_or_else(|| "-".into()),
                n.console_log.display()
            );
        }
        println!(
            "VIP {}: {}; host {} on the segment ({})",
            st.vip,
            st.vip_holder.as_deref().unwrap_or("nobody answers"),
            st.host_address,
            st.accel
        );
    }
    match cmd {
        VmCmd::Up {
            out,
            nodes,
            cluster,
            identity,
            memory,
            no_rng,
            cpu,
            no_wait,
            timeout,
        } => {
            if let Some(c) = &cluster {
                let (model, _) = Cluster::load(c)?;
                slipway::vm::session::Build::read(&out)?.expect_cluster(&model.name, &out)?;
            }
            let opts = UpOptions {
                nodes,
                identity,
                memory_mib: memory,
                rng: !no_rng,
                cpu,
                ..UpOptions::default()
            };
            let mut s = Session::up(&out, &opts).with_context(|| {
                format!(
                    "bringing {} up (`slipway vm down {}` clears what is left)",
                    out.display(),
                    out.display()
                )
            })?;
            if !no_wait && let Err(e) = s.wait_all(Duration::from_secs(timeout)) {
                // Left running, to look at: `vm status`, `vm console`, `vm ssh`.
                let st = s.status();
                s.detach();
                table(&st);
                return Err(anyhow::Error::new(e).context(format!(
                    "the machines are left running to look at; `slipway vm down {}` ends them",
                    out.display()
                )));
            }
            let st = s.status();
            s.detach();
            print(&st)?;
        }
        VmCmd::Status { out } => {
            let mut s = Session::open(&out)?;
            let st = s.status();
            s.detach();
            print(&st)?;
        }
        VmCmd::Ssh { out, node, command } => {
            let s = Session::open(&out)?;
            let cmd = (!command.is_empty()).then(|| command.join(" "));
            let status = s
                .ssh_command(&node, cmd.as_deref())?
                .status()
                .context("running ssh (openssh-client)")?;
            s.detach();
            std::process::exit(status.code().unwrap_or(255));
        }
        VmCmd::Console { out, node } => {
            let s = Session::open(&out)?;
            let sock = s.console_socket(&node)?;
            s.detach();
            slipway::vm::attach_console(&sock)?;
        }
        VmCmd::PowerOff {
            out,
            node,
            graceful,
        } => {
            let mut s = Session::open(&out)?;
            s.power_off(&node, graceful)?;
            s.detach();
            println!("{node}: off");
        }
        VmCmd::PowerOn { out, node, no_wait } => {
            let mut s = Session::open(&out)?;
            s.power_on(&node)?;
            if !no_wait {
                let at = s.wait_running(&node, Duration::from_secs(900))?;
                println!("{node}: running {:.1} s after power-on", at.as_secs_f64());
            }
            s.detach();
        }
        VmCmd::Test {
            out,
            failover,
            junit,
        } => {
            let mut s = Session::open(&out)?;
            let report =
                slipway::vm::check::run_all(&mut s, slipway::vm::check::Options { failover });
            s.detach();
            if let Some(f) = &junit {
                let xml = report.junit().map_err(anyhow::Error::msg)?;
                slipway::fsutil::write_atomic(f, xml.as_bytes(), 0o644)
                    .with_context(|| format!("writing {}", f.display()))?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for c in &report.checks {
                    let (mark, why) = match &c.outcome {
                        slipway::vm::check::Outcome::Passed => ("ok", c.detail.clone()),
                        slipway::vm::check::Outcome::Failed { why } => ("FAILED", why.clone()),
                        slipway::vm::check::Outcome::Skipped { why } => ("SKIPPED", why.clone()),
                    };
                    println!("{mark:<8} {:<52} {:>6.1} s  {why}", c.name, c.seconds);
                }
            }
            if !report.passed() {
                std::process::exit(1);
            }
        }
        VmCmd::Down { out } => {
            let dir = slipway::vm::session::default_dir(&out);
            let stopped = match Session::open_dir(&dir) {
                Ok(s) => s.down()?,
                // Ended already (its network gone): what is left of it is cleared.
                Err(_) => slipway::vm::session::clear_dead(&dir)?,
            };
            println!(
                "{}: down ({} machines stopped; network and {} removed)",
                out.display(),
                stopped.len(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// Where slipway-init is looked for when --init is not given.
fn default_init() -> PathBuf {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_default();
    let beside = exe_dir.join("slipway-init");
    if beside.exists() {
        return beside;
    }
    exe_dir.join("../init/slipway-init")
}

#[derive(Debug, clap::Args)]
struct DebianArgs {
    /// Debian mirror URL [default: the profile's, else the host's apt sources]
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// Download cache [default: $SLIPWAY_CACHE, $XDG_CACHE_HOME/slipway or ~/.cache/slipway]
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Lock file [default: slipway.lock in the data directory]
    #[arg(long, value_name = "FILE")]
    lock: Option<PathBuf>,
    /// Fail if the lock file is missing or stale instead of resolving
    #[arg(long)]
    locked: bool,
    /// A copy of the Kubernetes release tree (VERSION/bin/linux/ARCH/NAME and
    /// NAME.sha512), read instead of the release server
    #[arg(long, value_name = "DIR", env = "SLIPWAY_KUBE_ARTIFACTS")]
    kube_artifacts: Option<PathBuf>,
}

impl DebianArgs {
    fn options(self, data: &DataDir) -> slipway::rootfs::Options {
        slipway::rootfs::Options {
            data: data.clone(),
            cache: self.cache.unwrap_or_else(slipway::rootfs::default_cache),
            lock_path: self.lock.unwrap_or_else(|| data.root.join("slipway.lock")),
            mirror: self.mirror,
            host_root: PathBuf::from("/"),
            locked: self.locked,
            source_date_epoch: slipway::rootfs::source_date_epoch_env().unwrap_or(0),
            kube_artifacts: self.kube_artifacts,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let data = DataDir::new(cli.data_dir.unwrap_or_else(pipeline::default_data_dir));
    match cli.cmd {
        Cmd::Check { cluster } => {
            let (c, warnings) = Cluster::load(&cluster)?;
            warn(&warnings);
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                println!(
                    "{}: cluster {} with {} nodes is valid",
                    cluster.display(),
                    c.name,
                    c.nodes.len()
                );
            }
        }
        Cmd::Secrets {
            cluster,
            secrets,
            renew_within_days,
        } => {
            let dir = secrets.unwrap_or_else(|| pipeline::default_secrets_dir(&cluster));
            let opts = EnsureOptions {
                renew_within: renew_within_days.map(|d| time::Duration::days(i64::from(d))),
                ..EnsureOptions::default()
            };
            let (_, _, report, warnings) = pipeline::secrets(&cluster, &dir, opts)
                .with_context(|| format!("preparing secrets in {}", dir.display()))?;
            warn(&warnings);
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{}: {} created, {} re-issued, {} kept",
                    dir.display(),
                    report.created.len(),
                    report.reissued.len(),
                    report.kept.len()
                );
                for id in report.created.iter().chain(&report.reissued) {
                    println!("  issued {id}");
                }
                for (id, when) in &report.expiring {
                    eprintln!(
                        "warning: {id} expires {when}; run `slipway secrets --renew-within-days 30`"
                    );
                }
            }
        }
        Cmd::Rootfs {
            profile,
            out,
            debian,
        } => {
            let opts = debian.options(&data);
            let t = std::time::Instant::now();
            let r = slipway::rootfs::build(&profile, &opts)
                .with_context(|| format!("building the {profile} root filesystem"))?;
            let sha = slipway::rootfs::write_outputs(&r, &out, opts.source_date_epoch)
                .with_context(|| format!("writing {}", out.display()))?;
            let summary = serde_json::json!({
                "profile": profile,
                "out": out,
                "sbom": slipway::rootfs::sbom_path(&out),
                "sha256": sha,
                "packages": r.locked.packages.len(),
                "entries": r.tree.len(),
                "lock_updated": r.lock_updated,
                "seconds": t.elapsed().as_secs_f64(),
            });
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "{}: {} packages, {} entries, sha256 {}{}",
                    out.display(),
                    r.locked.packages.len(),
                    r.tree.len(),
                    sha,
                    if r.lock_updated {
                        " (lock updated)"
                    } else {
                        ""
                    }
                );
            }
        }
        Cmd::Build {
            cluster,
            out,
            secrets,
            init,
            no_qcow2,
            debian,
        } => {
            let opts = slipway::build::BuildOptions {
                rootfs: debian.options(&data),
                secrets_dir: secrets.unwrap_or_else(|| pipeline::default_secrets_dir(&cluster)),
                init: init.unwrap_or_else(default_init),
                qcow2: !no_qcow2,
                progress: !cli.json,
            };
            let m = slipway::build::build(&cluster, &opts, &out)
                .with_context(|| format!("building {}", cluster.display()))?;
            warn(&m.warnings);
            if std::env::var_os("SLIPWAY_TIMINGS").is_some() {
                for (s, t) in &m.report.steps {
                    eprintln!("{t:6.2} s  {s}");
                }
            }
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                for r in &m.roles {
                    println!(
                        "{}: {} packages, kernel {}, root {} MiB (slot {} MiB), root hash {}",
                        r.role,
                        r.packages,
                        r.kernel,
                        r.root_size >> 20,
                        r.root_slot >> 20,
                        r.root_hash
                    );
                }
                for a in &m.artifacts {
                    if a.path.ends_with(".raw") || a.path.ends_with(".qcow2") {
                        println!(
                            "{}/{}  {} MiB  sha256 {}",
                            out.display(),
                            a.path,
                            a.size >> 20,
                            a.sha256
                        );
                    }
                }
                let r = &m.report;
                let kept = |what: &str, v: &[String]| match v.len() {
                    0 => String::new(),
                    _ => format!("; kept {what} {} unchanged", v.join(", ")),
                };
                println!(
                    "{}/manifest.json: {} artifacts, built in {:.1} s, {} MiB of disk images written{}{}",
                    out.display(),
                    m.artifacts.len(),
                    r.seconds,
                    r.disk_bytes_written >> 20,
                    kept("the role images of", &r.roles_reused),
                    kept("the disks of", &r.nodes_reused),
                );
            }
        }
        Cmd::Fetch {
            profiles,
            kubernetes,
            debian,
        } => {
            let opts = debian.options(&data);
            let profiles = default_profiles(profiles);
            for p in &profiles {
                let (locked, updated) =
                    slipway::rootfs::fetch(p, &opts).with_context(|| format!("fetching {p}"))?;
                let bytes: u64 = locked
                    .packages
                    .iter()
                    .chain(&locked.image_packages)
                    .map(|p| p.size)
                    .sum();
                let images = match locked.image_packages.len() {
                    0 => String::new(),
                    n => format!(" (+{n} for container images)"),
                };
                println!(
                    "{p}: {} packages{images}, {} MB in {}{}",
                    locked.packages.len(),
                    bytes / 1_000_000,
                    opts.cache.display(),
                    if updated { " (lock updated)" } else { "" }
                );
            }
            if !kubernetes.is_empty() {
                let fetched = slipway::rootfs::fetch_kubernetes(&kubernetes, &profiles, &opts)
                    .context("fetching the Kubernetes binaries and images")?;
                for f in fetched {
                    println!("kubernetes: {f} in {}", opts.cache.display());
                }
            }
        }
        Cmd::Pull { images, cache } => {
            let cache = slipway::debian::fetch::Cache::new(
                &cache.unwrap_or_else(slipway::rootfs::default_cache),
            );
            let client = slipway::oci::Client::new(&cache);
            for i in images {
                let r: slipway::oci::Reference = i.parse()?;
                let p = client.pull(&r)?;
                let bytes: u64 = p.layers.iter().map(|l| l.size).sum();
                println!(
                    "{r}: manifest sha256:{}, {} layers, {bytes} bytes",
                    p.manifest.sha256,
                    p.layers.len()
                );
            }
        }
        Cmd::Lock {
            profiles,
            kubernetes,
            debian,
        } => {
            let opts = debian.options(&data);
            let profiles = default_profiles(profiles);
            let lock = slipway::rootfs::refresh_lock(&profiles, &kubernetes, &opts)
                .context("refreshing the lock")?;
            for v in &kubernetes {
                let pins = &lock.kubernetes[v];
                for (name, b) in &pins.binaries {
                    println!("kubernetes {v}: {name} sha512:{}", &b.sha512[..16]);
                }
                for (name, digest) in &pins.images {
                    println!("kubernetes {v}: {name}@{digest}");
                }
            }
            for (name, p) in &lock.profiles {
                println!(
                    "{name}: {} packages from {} ({})",
                    p.packages.len(),
                    p.codename,
                    p.suite
                );
            }
        }
        Cmd::Render {
            cluster,
            out,
            secrets,
        } => {
            let dir = secrets.unwrap_or_else(|| pipeline::default_secrets_dir(&cluster));
            let summary = pipeline::render(&cluster, &dir, &data, &out)
                .with_context(|| format!("rendering {}", cluster.display()))?;
            warn(&summary.warnings);
            for (id, when) in &summary.secrets.expiring {
                eprintln!(
                    "warning: {id} expires {when}; run `slipway secrets --renew-within-days 30`"
                );
            }
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                for id in summary
                    .secrets
                    .created
                    .iter()
                    .chain(&summary.secrets.reissued)
                {
                    println!("issued {id}");
                }
                for n in &summary.nodes {
                    println!(
                        "{}/nodes/{}/config.ign  {:<13} {:>3} files  sha256 {}",
                        out.display(),
                        n.name,
                        n.role.as_str(),
                        n.files,
                        &n.ignition_sha256[..16]
                    );
                }
            }
        }
        Cmd::Iso {
            cluster,
            out,
            node,
            iso,
        } => {
            let path = slipway::iso::write(&slipway::iso::IsoOptions {
                cluster,
                out_dir: out,
                node,
                iso,
                source_date_epoch: slipway::rootfs::source_date_epoch_env().unwrap_or(0),
            })?;
            if cli.json {
                println!("{}", serde_json::json!({ "iso": path }));
            } else {
                println!("{}", path.display());
            }
        }
        Cmd::Vm { cmd } => vm(cmd, cli.json)?,
        Cmd::Serve {
            dir,
            listen,
            keep_state,
        } => {
            // Every ServeError names its directory, file or address already.
            slipway::pxe::serve::serve(&slipway::pxe::serve::ServeOptions {
                dir,
                listen,
                keep_state,
            })?;
        }
    }
    Ok(())
}

fn default_profiles(profiles: Vec<String>) -> Vec<String> {
    if profiles.is_empty() {
        vec!["base".into(), "control-plane".into(), "worker".into()]
    } else {
        profiles
    }
}

fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
