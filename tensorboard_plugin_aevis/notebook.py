"""Read logged analyses back in a notebook or script, without a TensorBoard server.

:func:`load_analyses` loads a logdir with TensorBoard's own event loader (the event
multiplexer and its data provider, every AEVis record kept: no sampling) and reads each
analysis through :mod:`.run_reader`, the same reader the dashboard's routes use, so a
notebook sees exactly what the dashboard shows.
"""

from __future__ import annotations

import os
import warnings
from typing import List, Optional

from . import metadata, run_reader


def load_analyses(
    logdir: str,
    run: Optional[str] = None,
    name: Optional[str] = None,
    method: Optional[str] = None,
    step: Optional[int] = None,
) -> List[run_reader.LoadedAnalysis]:
    """Every analysis logged under ``logdir`` (optionally only those of ``run`` / ``name`` /
    ``method`` / ``step``), sorted by run, name, method and step.

    Args:
        logdir: what you pass to ``tensorboard --logdir`` (a folder of runs), or one run's folder
            (its run is then ``"."``).
        run, name, method, step: keep only the analyses that match (None: any).

    Returns:
        ``run_reader.LoadedAnalysis`` objects: ``.analysis`` is the :class:`.analysis.Analysis`
        (gates exact, images within 1/510 from their PNG), ``.manifest`` the logged summary
        (``diff_curve``, ``diverging_merging``, ``has_model`` ...), ``.activation_maps`` reads
        the logged datapath maps one at a time, ``.model_artifact`` the saved model's folder or None.
        Reader warnings (missing or damaged parts) are issued as ``UserWarning``.

    Raises:
        FileNotFoundError: ``logdir`` is not a folder.
    """
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.context import RequestContext

    if not os.path.isdir(logdir):
        raise FileNotFoundError(f"logdir {logdir!r} is not a folder; pass the folder you give tensorboard --logdir")
    keep_all = {metadata.PLUGIN_NAME: 0}  # 0: keep every record (TensorBoard samples by default)
    multiplexer = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance=keep_all)
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
    ctx = RequestContext()
    index = run_reader.index_runs(provider, ctx, "")
    found: List[run_reader.LoadedAnalysis] = []
    messages = list(index.warnings)
    for run_name, keys in sorted(index.analyses.items()):
        if run is not None and run_name != run:
            continue
        for key in keys:
            if (name is not None and key.name != name) or (method is not None and key.method != method):
                continue
            for logged_step in key.steps:
                if step is not None and logged_step != step:
                    continue
                loaded = run_reader.load_analysis(provider, ctx, "", run_name, key.name, key.method, logged_step, logdir=logdir)
                messages.extend(m for m in loaded.warnings if m not in messages)
                found.append(loaded)
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=2)
    return found
