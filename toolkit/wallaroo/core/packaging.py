"""Load an app file, cloudpickle it with its manifest, and load it back on a runner."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import io
import os
import sys
import sysconfig
import time
import traceback
import types
from collections import ChainMap
from pathlib import Path
from typing import Any

import cloudpickle

from wallaroo.connectors import ConnectorSink
from wallaroo.core import codec
from wallaroo.core.errors import AppLoadError, ArtifactError, VersionMismatchError, WallarooError
from wallaroo.core.keys import SigningKey, Trust
from wallaroo.core.wire import Manifest, StageInfo
from wallaroo.functions import App
from wallaroo.plan import Application

# Bumped if what is signed ever changes: an old signature then fails instead of meaning something else.
SIGNED_PREFIX = b"wallaroo-deploy-v1\0"


def python_minor() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def load_app(path: Path, args: list[str] | None = None) -> tuple[Application, types.ModuleType]:
    """Import the app file and return its stream Application (no stages for an app of
    functions only); see `load_deployable`."""
    deployed, module = load_deployable(path, args)
    return deployed.built(), module


def load_deployable(path: Path, args: list[str] | None = None) -> tuple[App, types.ModuleType]:
    """Import the app file and return what it deploys: a module-level `wallaroo.App`
    (functions and pipelines), or an Application from `application_setup(args)` (as in
    Wallaroo) or a module-level one."""
    module = _import_file(path)
    setup = getattr(module, "application_setup", None)
    if callable(setup):
        app = _call_user(path, lambda: setup(list(args or [])))
        if not isinstance(app, Application | App):
            msg = (f"{path}: application_setup(args) returned {type(app).__name__}; it must "
                   "return wallaroo.build_application(name, pipeline)")
            raise AppLoadError(msg)
        return _deployable(app), module
    apps = [v for v in vars(module).values() if isinstance(v, Application | App)]
    if len(apps) != 1:
        found = "none" if not apps else f"{len(apps)}"
        msg = (f"{path}: found {found} app objects; define exactly one module-level "
               "`app = wallaroo.App(name)` (functions, pipelines) or application_setup(args) "
               "returning wallaroo.build_application(...)")
        raise AppLoadError(msg)
    return _deployable(apps[0]), module


def _deployable(app: Application | App) -> App:
    return app if isinstance(app, App) else App.of(app)


def _import_file(path: Path) -> types.ModuleType:
    path = path.resolve()
    if not path.is_file():
        msg = f"app file {path} does not exist; pass the path of your app's .py file"
        raise AppLoadError(msg)
    name = path.stem if path.stem.isidentifier() else "wallaroo_user_app"
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader = spec.loader
    _call_user(path, lambda: loader.exec_module(module))
    return module


def _call_user(path: Path, fn: Any) -> Any:
    try:
        return fn()
    except AppLoadError:
        raise
    except WallarooError as exc:
        # A definition mistake (say, a decorator without its arguments): say where it is.
        where = _where(exc).removeprefix(" at ") or str(path)
        msg = f"{where}: {exc}"
        raise AppLoadError(msg) from exc
    except Exception as exc:
        msg = f"{path}: loading the app failed{_where(exc)}: {type(exc).__name__}: {exc}"
        raise AppLoadError(msg) from exc


def _where(exc: Exception) -> str:
    """` at FILE:LINE` of the user's code that failed."""
    # Why: a SyntaxError's traceback ends in the import machinery; its location is on it.
    if isinstance(exc, SyntaxError) and exc.filename and not exc.filename.startswith("<"):
        return f" at {exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_user_file(f.filename)]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


# Why: with an editable install the toolkit's own files are outside site-packages.
_TOOLKIT_DIR = str(Path(__file__).resolve().parents[1]) + os.sep  # the whole wallaroo package


def _is_user_file(filename: str) -> bool:
    return not filename.startswith(_not_users()) and "<frozen" not in filename


@functools.cache
def _not_users() -> tuple[str, ...]:
    """Where library and toolkit files live. Cached: sysconfig.get_paths() takes 0.15 ms, and
    a deploy asks for each of the ~400 modules loaded."""
    return (sysconfig.get_paths()["purelib"], sys.prefix, sys.base_prefix, _TOOLKIT_DIR)


def user_modules(root: Path) -> list[types.ModuleType]:
    """Modules loaded from the app's folder: shipped by value, since runners cannot import them."""
    root = root.resolve()
    found = []
    for mod in list(sys.modules.values()):
        file = getattr(mod, "__file__", None)
        # The string test first: resolving all ~400 loaded modules' paths took 0.07 s a deploy.
        if file and _is_user_file(file) and Path(file).resolve().is_relative_to(root):
            found.append(mod)
    return found


def build_artifact(app: Application | App, app_file: Path,
                   key: SigningKey | None = None) -> tuple[bytes, Manifest]:
    """The pickled app (the app folder's modules by value) and its manifest, signed with
    `key` (unsigned without one)."""
    deployed = _deployable(app)
    built = deployed.built()
    modules = user_modules(app_file.parent)
    for mod in modules:
        cloudpickle.register_pickle_by_value(mod)
    try:
        artifact = _pickle_keeping_files(deployed)
    finally:
        for mod in modules:
            cloudpickle.unregister_pickle_by_value(mod)
    manifest = Manifest(
        name=built.name, slug=built.slug, version=hashlib.sha256(artifact).hexdigest()[:16],
        python=python_minor(), cloudpickle=cloudpickle.__version__, partitions=built.partitions,
        stages=[_stage_info(built, s.index) for s in built.stages],
        sinks=[s.name for s in built.sinks],
        by_value_modules=sorted(m.__name__ for m in modules), created=time.time(),
        functions=[spec.info() for spec in deployed.specs.values()],
        job=built.is_job, delivered_sinks=[s.name for s in built.sinks if isinstance(s, ConnectorSink)],
    )
    return artifact, sign(artifact, manifest, key) if key is not None else manifest


def _pickle_keeping_files(obj: Any) -> bytes:
    buf = io.BytesIO()
    _FilePickler(buf).dump(obj)
    return buf.getvalue()


class _FilePickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle has no types
    """cloudpickle, but shipped code keeps the name of its file: cloudpickle writes every
    code object's co_filename as "<dynamic-code>" (to pickle the same code the same way from
    any folder), so a dead letter's traceback could not say where the user's code failed.
    The path is the deployer's: on a VM the file is not there, but its name and the line
    are what the user needs (and `wallaroo dev` shows the line itself). It costs no
    determinism: cloudpickle ships each by-value module's __file__ with its functions."""

    _reduce_code = cloudpickle.Pickler.dispatch_table[types.CodeType]

    def __init__(self, file: io.BytesIO) -> None:
        # The C pickler reads dispatch_table when it is made: set it first.
        self.dispatch_table = ChainMap({types.CodeType: self._code}, cloudpickle.Pickler.dispatch_table)
        super().__init__(file, protocol=5)

    def _code(self, code: types.CodeType) -> Any:
        rebuild, args = type(self)._reduce_code(code)
        return rebuild, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)


def _stage_info(app: Application, index: int) -> StageInfo:
    s = app.stages[index]
    framing = s.decoder.framing if s.decoder is not None else None
    return StageInfo(index, s.name, s.partitions, s.source, s.route.target if s.route else None,
                     [app.sinks[i].name for i in s.sinks],
                     framing.header_length if framing else None,
                     framing.length_fmt if framing else None)


def signed_payload(artifact: bytes, manifest: Manifest) -> bytes:
    """What a deploy signature covers: the artifact's full sha256 (the version is only 64 bits
    of it) and the whole manifest, which says how the code runs (partitions, stages, functions)."""
    return SIGNED_PREFIX + hashlib.sha256(artifact).digest() + manifest.unsigned_wire()


def sign(artifact: bytes, manifest: Manifest, key: SigningKey) -> Manifest:
    """`manifest` with `key`'s signature of it and `artifact`."""
    return dataclasses.replace(manifest, signature=key.sign(signed_payload(artifact, manifest)))


def verify_artifact(artifact: bytes, manifest: Manifest, trust: Trust) -> None:
    """Raise unless a key `trust` holds signed `manifest` and `artifact`, and the artifact
    matches the manifest's version (its content hash)."""
    what = f"{manifest.name} version {manifest.version}"
    trust.verify(signed_payload(artifact, manifest), manifest.signature, what)
    if hashlib.sha256(artifact).hexdigest()[:16] != manifest.version:
        msg = f"artifact of {what} does not match its content hash"
        raise ArtifactError(msg)


def load_artifact(artifact: bytes, manifest: Manifest, trust: Trust) -> App:
    """Unpickle a deployed app after checking its signature (first: nothing else is looked at
    in a deploy no trusted key signed), content hash and Python version."""
    verify_artifact(artifact, manifest, trust)
    if manifest.python != python_minor():
        raise VersionMismatchError(manifest.name, manifest.python, python_minor())
    app = cloudpickle.loads(artifact)
    if not isinstance(app, App):
        msg = f"artifact of {manifest.name} holds {type(app).__name__}, not a wallaroo App"
        raise ArtifactError(msg)
    register_classes(app, manifest)
    return app


def register_classes(app: App, manifest: Manifest) -> None:
    """Give the app's by-value classes an importable home, so plain pickle can name them
    (fast per-record pickling) and state pickled by one version loads in the next.

    The home is named after the app, not the file: a new version may live in a renamed file
    and must still read the state the old one wrote. Only a class whose name another
    module of the same app already took gets a home named after its module as well."""
    codec.forget_state_classes()
    shipped = set(manifest.by_value_modules)
    taken: dict[str, type] = {}
    for cls in _app_classes(app):
        if cls.__module__ not in shipped or "." in cls.__qualname__ or "<" in cls.__qualname__:
            continue
        clash = taken.setdefault(cls.__qualname__, cls) is not cls
        suffix = "__" + cls.__module__.replace(".", "__") if clash else ""
        # A flat name: pickle imports a dotted module path part by part.
        _home(f"_wallaroo_app__{manifest.slug}{suffix}", cls)


def _home(name: str, cls: type) -> None:
    module = sys.modules.get(name) or types.ModuleType(name)
    sys.modules[name] = module
    setattr(module, cls.__qualname__, cls)
    cls.__module__ = name


def _app_classes(deployed: App) -> list[type]:
    app = deployed.built()
    fns: list[Any] = [spec.target for spec in deployed.specs.values()]
    for stage in app.stages:
        fns += [s.fn for s in stage.steps] + [s.state for s in stage.steps if s.state]
        fns += [stage.decoder.fn] if stage.decoder else []
        fns += [stage.route.extractor.fn] if stage.route and stage.route.extractor else []
    fns += [sink.encoder for sink in app.sinks]
    classes = {id(f): f for f in fns if isinstance(f, type)}
    for f in fns:
        for v in getattr(f, "__globals__", {}).values():
            if isinstance(v, type):
                classes[id(v)] = v
    return list(classes.values())
