"""`wallaroo dev`: deploy an app on a local cluster, feed it, print its outputs.

The cluster keeps its state under STATE_DIR between sessions (JetStream store, keyed state,
outputs, keys): stop dev and start it again and the app goes on where it was; `--fresh` starts
empty. The session itself (deploy, feed, print) is devsession's."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wallaroo.core.keys import replace_file
from wallaroo.local.dev import DevCluster

if TYPE_CHECKING:
    from wallaroo.local import devsession

INTERRUPTED = 130  # exit code of a `dev --input` stopped by Ctrl-C/SIGTERM before its end


def run_dev(app_file: Path, input_file: Path | None, runners: int, source: str | None,
            state_dir: Path, timeout: float, autoscale: Sequence[str] | None = None,
            tls: bool = False, fresh: bool = False, max_backlog: int | None = None) -> int:
    """`autoscale`: arguments for a `wallaroo autoscaler --backend local` process, which then
    sizes the runner pool; None: the pool keeps `runners` (or what `wallaroo scale` asks).
    `tls`: nats-server speaks TLS only, with a CA made under STATE_DIR/tls (see DevCluster).
    `max_backlog`: --input is sent at most that many messages ahead of the app (0: no bound,
    None: the default, see devsession.input_backlog)."""
    # With --fresh the app and input are checked before the cluster empties STATE_DIR: a typo
    # in the app must not cost the state the last dev here left.
    session = _prepare(app_file, input_file, source, timeout, autoscale, max_backlog) if fresh else None
    cluster = DevCluster(state_dir, runners, fresh=fresh, tls=tls)
    with cluster.launched():
        # Otherwise once nats-server is on its way: the app's load, the NATS client and the
        # deploy's modules (0.15 s) overlap its start.
        if session is None:
            session = _prepare(app_file, input_file, source, timeout, autoscale, max_backlog)
        # The runners, after that work and not with the server: a runner's start is 0.5 s
        # of CPU, and where they share a core (2 cores and anything else running) started
        # together they made "deployed" 0.15 s later, with no sooner first output. A broken
        # app or input starts none.
        cluster.start_runners()
        cluster.wait_ready()
        url_file = state_dir / "url"
        # whole or not at all: `wallaroo send` in another shell may read it the moment it shows
        replace_file(url_file, cluster.url.encode(), 0o644)
        info(f"nats-server at {cluster.url}, {runners} runner(s), logs in {state_dir / 'logs'}")
        try:
            code = _serve(cluster, session)
        finally:
            url_file.unlink(missing_ok=True)
            info("stopping runners and nats-server")
    return 0 if input_file is None else INTERRUPTED if code is None else code


def _prepare(app_file: Path, input_file: Path | None, source: str | None, timeout: float,
             autoscale: Sequence[str] | None, max_backlog: int | None) -> devsession.Session:
    """The app loaded and the input checked (devsession.prepare): a broken one fails here.
    Imported here, not at the top: see run_dev."""
    from wallaroo.local import devsession

    return devsession.prepare(app_file, input_file, source, timeout, autoscale, max_backlog)


def _serve(cluster: DevCluster, session: devsession.Session) -> int | None:
    from wallaroo.local import devsession

    return devsession.serve(cluster, session)


def info(text: str) -> None:
    """A line for the person at the terminal: on stderr, stdout keeps the outputs."""
    sys.stderr.write(f"wallaroo: {text}\n")
    sys.stderr.flush()
