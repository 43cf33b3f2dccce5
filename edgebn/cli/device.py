"""The CLI's device commands: bundle, emulate, deploy (registered on edgebn.cli.app's app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgebn.cli import render
from edgebn.cli.options import EXIT_PROBLEM, JsonFlag, VerboseFlag
from edgebn.cli.ui import StageProgress, print_json, quiet
from edgebn.errors import EdgebnError
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
    from edgebn.pipeline.rebundle import bundle_build

    with quiet(verbose):  # the self-test's interpreter announces its delegate on fd 2
        result = bundle_build(build_dir, out, sign, profile)
    print_json(result.to_json()) if as_json else render.bundle(result)


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
    from edgebn.deploy.emulate import emulate as run_emulate

    with StageProgress() as notes:
        result = run_emulate(bundle_dir, tuple(runtime) if runtime else None, cache, log=notes.note,
                             os_name=os_name)
    print_json(result.to_json()) if as_json else render.emulation(result)
    if not result.passed:
        raise typer.Exit(EXIT_PROBLEM)


def deploy(
    bundle_dir: Annotated[Path | None, typer.Argument(
        exists=True, file_okay=False, help="A bundle directory (not with --rollback).")] = None,
    host: Annotated[list[str] | None, typer.Option(
        "--host", help="user@host[:port], as ssh takes it (repeatable).")] = None,
    hosts: Annotated[Path | None, typer.Option(
        "--hosts", exists=True, dir_okay=False, readable=True,
        help="A file of hosts: one user@host[:port] a line, # comments.")] = None,
    dest: Annotated[str, typer.Option("--dest", help="Directory on the device.")] = "edgebn",
    selftest: Annotated[bool, typer.Option(
        "--selftest", help="Run predict.py --selftest in DEST/current and bring its JSON back.")
    ] = False,
    bench: Annotated[bool, typer.Option(
        "--bench", help="Run predict.py --bench on the device: p50/p90/p99, CPU, cores.")] = False,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Invokes for --bench (and per operator "
                                                           "for --profile).")] = 200,
    profile: Annotated[bool, typer.Option(
        "--profile", help="Time each operator on the device (predict.py --profile; the bundle "
                          "made with edgebn bundle --profile).")] = False,
    rollback: Annotated[bool, typer.Option(
        "--rollback", help="Point DEST/current back at the previous release (no bundle).")] = False,
    trust: Annotated[Path | None, typer.Option(
        "--trust", exists=True, dir_okay=False, readable=True,
        help="Install this SSH public key (KEY.pub) as the device's trusted bundle signer.")
    ] = None,
    trust_file: Annotated[str | None, typer.Option(
        "--trust-file", help="The device's trust file (default ~/.config/edgebn/allowed_signers)."
    )] = None,
    python: Annotated[str, typer.Option("--python", help="The device's Python.")] = "python3",
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535)] = None,
    identity: Annotated[Path | None, typer.Option("--identity", "-i", help="ssh key file.")] = None,
    ssh_option: Annotated[list[str] | None, typer.Option(
        "--ssh-option", "-o", help="An ssh -o option (repeatable).")] = None,
    parallel: Annotated[int, typer.Option("--parallel", min=1, help="Hosts at once.")] = 8,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds per host (all its ssh calls).")
                       ] = 600.0,
    service: ServiceFlag = False, listen: ListenIn = None,
    socket: SocketIn = None, workers: WorkersIn = None,
    as_json: JsonFlag = False,
) -> None:
    """Copy a bundle to devices over ssh as a new release; --selftest, --bench, --rollback."""
    from edgebn.deploy.fleet import parse_host, read_hosts
    from edgebn.deploy.ssh import DeployOptions, SshTarget

    base = SshTarget("localhost", port, identity, tuple(ssh_option or ()))
    targets = [parse_host(h, base) for h in host or ()]
    targets += read_hosts(hosts, base) if hosts is not None else []
    if not targets:
        raise EdgebnError("no device: give --host user@host or --hosts FILE")
    if (bundle_dir is None) != rollback:
        raise EdgebnError("give a BUNDLE to deploy, or --rollback without one")
    options = DeployOptions(dest, selftest, python, bench, runs, trust, trust_file, timeout,
                            profile=profile)
    if service or listen or socket or workers:
        return _deploy_service(bundle_dir, targets, options, (service, listen, socket, workers),
                               parallel if len(targets) > 1 or hosts is not None else 0, as_json)
    if len(targets) == 1 and hosts is None:
        _deploy_one(bundle_dir, targets[0], options, as_json)
    else:
        _deploy_fleet(bundle_dir, targets, options, parallel, as_json)


def _deploy_one(bundle_dir, target, options, as_json: bool) -> None:
    """One host: the single-host JSON as before; a failure is one line, exit 2."""
    from edgebn.deploy.ssh import deploy as run_deploy
    from edgebn.deploy.ssh import rollback

    if bundle_dir is None:
        result = rollback(target, options)
        print_json(result.to_json()) if as_json else render.rollback(result)
        return
    result = run_deploy(bundle_dir, target, options)
    print_json(result.to_json()) if as_json else render.deploy(result)
    if not result.passed:
        raise typer.Exit(EXIT_PROBLEM)


def _deploy_fleet(bundle_dir, targets, options, parallel: int, as_json: bool) -> None:
    from edgebn.deploy.fleet import deploy_fleet, rollback_fleet

    result = (rollback_fleet(targets, options, parallel) if bundle_dir is None
              else deploy_fleet(bundle_dir, targets, options, parallel))
    print_json(result.to_json()) if as_json else render.fleet(result)
    if not result.passed:
        raise typer.Exit(EXIT_PROBLEM)


def _deploy_service(bundle_dir, targets, options, asked: tuple, parallel: int, as_json: bool) -> None:
    """--service: the release, then its server (edgebn.deploy.service); parallel 0: one host."""
    from edgebn.deploy import service as svc

    on, listen, socket, workers = asked
    if not on:
        raise EdgebnError("--listen, --socket and --workers go with --service")
    service = svc.ServiceOptions(listen, socket, workers)
    if not parallel:
        result = (svc.rollback_service(targets[0], options, service) if bundle_dir is None
                  else svc.deploy_service(bundle_dir, targets[0], options, service))
        print_json(result.to_json()) if as_json else render.served(result)
    else:
        result = (svc.rollback_service_fleet(targets, options, service, parallel) if bundle_dir is None
                  else svc.deploy_service_fleet(bundle_dir, targets, options, service, parallel))
        print_json(result.to_json()) if as_json else render.fleet(result)
    if not result.passed:
        raise typer.Exit(EXIT_PROBLEM)


def register_device_commands(app: typer.Typer) -> None:
    for command in (bundle, emulate, deploy):
        app.command()(command)
