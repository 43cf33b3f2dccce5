"""The CLI's device commands: bundle, emulate, deploy (registered on edgebn.cli.app's app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgebn.cli import render, render_device
from edgebn.cli.options import EXIT_PROBLEM, JsonFlag, VerboseFlag
from edgebn.cli.ui import StageProgress, quiet, show
from edgebn.deploy import service as svc
from edgebn.deploy.ansible_engine import Connection, export_playbook, rollout_ansible
from edgebn.deploy.emulate import emulate as run_emulate
from edgebn.deploy.fleet import parse_host, read_hosts, rollback_fleet
from edgebn.deploy.policy import Engine, RolloutPolicy, parse_batches
from edgebn.deploy.release import DeployOptions
from edgebn.deploy.rollout import rollout_native
from edgebn.deploy.ssh import SshTarget
from edgebn.deploy.ssh import deploy as run_deploy
from edgebn.deploy.ssh import rollback as rollback_host
from edgebn.errors import EdgebnError
from edgebn.pipeline.rebundle import bundle_build
from edgebn.runtime.backends import Backend

BundleIn = Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                          help="A bundle directory (edgebn bundle).")]
KeyIn = Annotated[Path | None, typer.Option(
    "--sign", exists=True, dir_okay=False, readable=True,
    help="Sign manifest.json with this SSH private key (ssh-keygen -Y sign): "
         "writes manifest.json.sig.")]

# deploy --service (edgebn.deploy.service)
ServiceFlag = Annotated[bool, typer.Option(
    "--service", help="Run the model as a server (predict.py --serve) in a systemd user unit from "
                      "DEST/current; with --rollback, the server moves back too.")]
ListenIn = Annotated[str | None, typer.Option(
    "--listen", help="With --service: HOST:PORT on the device (default 127.0.0.1:8750; "
                     "0.0.0.0:PORT for every interface).")]
SocketIn = Annotated[str | None, typer.Option(
    "--socket", help="With --service: a Unix socket on the device instead.")]
WorkersIn = Annotated[int | None, typer.Option(
    "--workers", min=1, max=64, help="With --service: requests the server runs at once.")]


def bundle(
    build_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                              help="A build directory (edgebn build --out).")],
    out: Annotated[Path, typer.Option("--out", help="The bundle directory to write.")],
    sign: KeyIn = None,
    profile: Annotated[bool, typer.Option(
        "--profile", help="Also ship one-operator models, for predict.py --profile and "
                          "edgebn deploy --profile (per-operator time on the device).")] = False,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Write a self-verifying device bundle: model, labels, predict.py, golden I/O, manifest."""
    with quiet(verbose):  # the self-test's interpreter announces its delegate on fd 2
        result = bundle_build(build_dir, out, sign, profile)
    show(result, as_json, render_device.bundle)


def emulate(
    bundle_dir: BundleIn,
    runtime: Annotated[list[Backend] | None, typer.Option(
        "--runtime", help="tflite-runtime and/or ai-edge-litert (default: each the release has "
                          "a wheel for).")] = None,
    os_name: Annotated[str, typer.Option(
        "--os", help="The Raspberry Pi OS release: trixie (Python 3.13, what Imager installs now) "
                     "or bookworm (Python 3.11).")] = "trixie",
    cache: Annotated[Path | None, typer.Option(
        "--cache", file_okay=False, help="Userland and venv cache (default pi-<os>-arm64 in "
                                         "$EDGEBN_CACHE, ~/.cache/edgebn).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the bundle's self-test on an emulated 64-bit Raspberry Pi OS (exit 1 if it fails).

    The runtime is installed by the bundle's own README steps (a venv that sees Debian's
    NumPy, then pip), run by the emulated arm64 Python.
    """
    with StageProgress() as notes:
        result = run_emulate(bundle_dir, tuple(runtime) if runtime else None, cache, log=notes.note,
                             os_name=os_name)
    show(result, as_json, render.emulation)
    if not result.passed:
        raise typer.Exit(EXIT_PROBLEM)


HostOpt = Annotated[list[str] | None, typer.Option(
    "--host", help="user@host[:port], as ssh takes it (repeatable).")]
HostsOpt = Annotated[Path | None, typer.Option(
    "--hosts", exists=True, dir_okay=False, readable=True,
    help="A file of hosts: one user@host[:port] a line, # comments.")]
InventoryOpt = Annotated[str | None, typer.Option(
    "--inventory", help="An Ansible inventory (a file, a plugin's config, or 'a,b,'): the "
                        "hosts, with --engine ansible.")]
EngineOpt = Annotated[Engine, typer.Option(
    "--engine", help="native: edgebn's own threads over ssh; ansible: ansible-playbook with the "
                     "edgebn.fleet collection (pip install 'edgebn\\[fleet]').")]
BatchesOpt = Annotated[str | None, typer.Option(
    "--batches", help="Batch sizes or percentages, as Ansible's serial: e.g. 1,10%,100% (the "
                      "last repeats until every host has one).")]
MaxFailuresOpt = Annotated[int | None, typer.Option(
    "--max-failures", min=0, help="More failed (or refused, or rolled back) hosts than this in "
                                  "the whole rollout and no later batch starts.")]
CheckOpt = Annotated[bool, typer.Option(
    "--check", help="Report what would change on each host; change nothing.")]
SelftestOpt = Annotated[bool, typer.Option(
    "--selftest/--no-selftest", help="Self-test the staged release on the device before the "
                                     "switch (and, without a service, after it). --no-selftest "
                                     "switches unproven.")]
HealthTimeoutOpt = Annotated[float, typer.Option(
    "--health-timeout", min=0.1, help="Seconds for the service's /health to report the new "
                                      "release (DEST/service.json).")]
NoRollbackOpt = Annotated[bool, typer.Option(
    "--no-rollback", help="Keep a release that failed its health check live (to look at it on "
                          "the device).")]
BenchOpt = Annotated[bool, typer.Option(
    "--bench", help="Run predict.py --bench on the device: p50/p90/p99, CPU, cores.")]
RunsOpt = Annotated[int, typer.Option(
    "--runs", min=1, help="Invokes for --bench (and per operator for --profile).")]
ProfileOpt = Annotated[bool, typer.Option(
    "--profile", help="Time each operator on the device (predict.py --profile; the bundle made "
                      "with edgebn bundle --profile).")]
RollbackOpt = Annotated[bool, typer.Option(
    "--rollback", help="Point DEST/current back at the previous release (no bundle).")]
TrustOpt = Annotated[Path | None, typer.Option(
    "--trust", exists=True, dir_okay=False, readable=True,
    help="Install this SSH public key (KEY.pub) as the device's trusted bundle signer.")]
TrustFileOpt = Annotated[str | None, typer.Option(
    "--trust-file", help="The device's trust file (default ~/.config/edgebn/allowed_signers).")]
SshOptionOpt = Annotated[list[str] | None, typer.Option(
    "--ssh-option", "-o", help="An ssh -o option (repeatable).")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=1, help="Seconds per host (all its ssh calls).")]
ExportOpt = Annotated[Path | None, typer.Option(
    "--export-playbook", file_okay=False,
    help="Write the Ansible playbook, inventory, variables, packed release and ansible.cfg "
         "(collections_path) to this directory, for your own ansible-playbook; run nothing.")]


def deploy(
    bundle_dir: Annotated[Path | None, typer.Argument(
        exists=True, file_okay=False, help="A bundle directory (not with --rollback).")] = None,
    host: HostOpt = None, hosts: HostsOpt = None, inventory: InventoryOpt = None,
    engine: EngineOpt = Engine.native, batches: BatchesOpt = None,
    max_failures: MaxFailuresOpt = None, check: CheckOpt = False,
    dest: Annotated[str, typer.Option("--dest", help="Directory on the device.")] = "edgebn",
    selftest: SelftestOpt = True, health_timeout: HealthTimeoutOpt = 30.0,
    no_rollback: NoRollbackOpt = False, bench: BenchOpt = False, runs: RunsOpt = 200,
    profile: ProfileOpt = False, rollback: RollbackOpt = False, trust: TrustOpt = None,
    trust_file: TrustFileOpt = None,
    python: Annotated[str, typer.Option("--python", help="The device's Python.")] = "python3",
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535)] = None,
    identity: Annotated[Path | None, typer.Option("--identity", "-i", help="ssh key file.")] = None,
    ssh_option: SshOptionOpt = None,
    parallel: Annotated[int, typer.Option("--parallel", min=1, help="Hosts at once.")] = 8,
    timeout: TimeoutOpt = 600.0, export_playbook: ExportOpt = None,
    service: ServiceFlag = False, listen: ListenIn = None,
    socket: SocketIn = None, workers: WorkersIn = None,
    as_json: JsonFlag = False,
) -> None:
    """Ship a bundle to devices: staged, verified, self-tested, switched, health-checked, and
    rolled back on failure; in batches with a failure budget; --rollback, --check."""
    base = SshTarget("localhost", port, identity, tuple(ssh_option or ()))
    targets = [parse_host(h, base) for h in host or ()]
    targets += read_hosts(hosts, base) if hosts is not None else []
    _check_hosts(targets, inventory, engine, export_playbook is not None)
    if (bundle_dir is None) != rollback:
        raise EdgebnError("give a BUNDLE to deploy, or --rollback without one")
    options = DeployOptions(dest, selftest, python, bench, runs, trust, trust_file, timeout,
                            profile=profile, health_timeout_s=health_timeout,
                            rollback=not no_rollback)
    policy = RolloutPolicy(parse_batches(batches) if batches is not None else (), max_failures,
                           check, parallel)
    conn = Connection(tuple(targets), inventory, base, port is not None)
    fleet = len(targets) > 1 or hosts is not None
    native = engine is Engine.native and inventory is None and export_playbook is None
    if service or listen or socket or workers:
        _native_only("--service", native)
        _deploy_service(bundle_dir, targets, options, (service, listen, socket, workers),
                        parallel if fleet else 0, as_json)
    elif rollback:
        _native_only("--rollback", native)
        _rollback(targets, options, parallel, not fleet, as_json)
    elif export_playbook is not None:
        _export(export_playbook, bundle_dir, conn, options, policy, as_json)
    elif not fleet and native and (batches, max_failures, check) == (None, None, False):
        _deploy_one(bundle_dir, targets[0], options, as_json)
    else:
        _rollout(bundle_dir, conn, options, policy, engine, as_json)


def _native_only(what: str, native: bool) -> None:
    if not native:
        raise EdgebnError(f"{what} runs with the native engine and --host/--hosts only")


def _check_hosts(targets, inventory: str | None, engine: Engine, export: bool) -> None:
    if not targets and inventory is None:
        raise EdgebnError("no device: give --host user@host, --hosts FILE or --inventory")
    if targets and inventory is not None:
        raise EdgebnError("--inventory names the hosts itself: not with --host or --hosts")
    if inventory is not None and engine is not Engine.ansible and not export:
        raise EdgebnError("--inventory is read by Ansible: add --engine ansible (or list the "
                          "hosts with --hosts FILE)")


def _deploy_one(bundle_dir: Path, target, options: DeployOptions, as_json: bool) -> None:
    """One host: its row; a deploy that did not run is one line, exit 2."""
    row = run_deploy(bundle_dir, target, options)
    show(row, as_json, render_device.deploy)
    if not row.passed:
        raise typer.Exit(EXIT_PROBLEM)


def _rollback(targets: list, options: DeployOptions, parallel: int, one: bool, as_json: bool
              ) -> None:
    if one:
        result = rollback_host(targets[0], options)
        show(result, as_json, render_device.rollback)
        return
    fleet = rollback_fleet(targets, options, parallel)
    show(fleet, as_json, render_device.fleet)
    if not fleet.passed:
        raise typer.Exit(EXIT_PROBLEM)


def _rollout(bundle_dir: Path, conn, options: DeployOptions, policy: RolloutPolicy, engine: Engine,
             as_json: bool) -> None:
    """Many hosts (or any of --batches, --max-failures, --check, --engine ansible): one row
    per host; exit 1 when a host failed, was refused or rolled back."""
    if engine is Engine.ansible:
        result = rollout_ansible(bundle_dir, conn, options, policy)
    else:
        result = rollout_native(bundle_dir, list(conn.targets), options, policy)
    show(result, as_json, render_device.rollout)
    if not result.passed:
        raise typer.Exit(EXIT_PROBLEM)


def _export(d: Path, bundle_dir: Path, conn, options: DeployOptions, policy: RolloutPolicy,
            as_json: bool) -> None:
    exported = export_playbook(d, bundle_dir, conn, options, policy)
    show(exported, as_json, render_device.exported)


def _deploy_service(bundle_dir, targets, options, asked: tuple, parallel: int,
                    as_json: bool) -> None:
    """--service: the release, then its server (edgebn.deploy.service); parallel 0: one host."""
    on, listen, socket, workers = asked
    if not on:
        raise EdgebnError("--listen, --socket and --workers go with --service")
    service = svc.ServiceOptions(listen, socket, workers)
    if not parallel:
        result = (svc.rollback_service(targets[0], options, service) if bundle_dir is None
                  else svc.deploy_service(bundle_dir, targets[0], options, service))
        show(result, as_json, render_device.served)
    else:
        result = (svc.rollback_service_fleet(targets, options, service, parallel)
                  if bundle_dir is None
                  else svc.deploy_service_fleet(bundle_dir, targets, options, service, parallel))
        show(result, as_json, render_device.fleet)
    if not result.passed:
        raise typer.Exit(EXIT_PROBLEM)


def register_device_commands(app: typer.Typer) -> None:
    for command in (bundle, emulate, deploy):
        app.command()(command)
