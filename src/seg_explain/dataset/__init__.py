"""Data-set runs: Agg2Exp and the evaluation metrics over many images, in this process or on
a Dask cluster, resumable, and nothing finished is ever lost.

The pieces (a package, used by ``seg-explain agg2exp|evaluate``, by
``agg2exp(..., client=..., out=...)`` / ``evaluate(..., client=..., out=...)`` and by the
napari Agg2Exp dock):

- **Inputs** (:func:`collect_images`): image paths, folders (their image files, sorted), glob
  patterns (``"scans/*.nii.gz"``, ``**`` allowed) and CSV manifests (a column ``image``, and
  optionally ``name``, ``ground_truth`` — also spelled ``label``, ``reference``, ``gt`` — and
  ``roi_<name>`` columns for extra RoI masks per image; relative paths are relative to the
  manifest). Each image becomes an :class:`ImageRecord` (name, image, ground truth, RoIs).
- **Jobs** (:class:`Agg2ExpJob`, :class:`EvaluateJob`): small picklable descriptions of the
  computation (model *path*, method, parameters, seed ...). ``job.compute(model, record)``
  is the per-image generator that both the serial path and the workers run
  (:func:`seg_explain.aggregate.agg2exp_image_iter`,
  :func:`seg_explain.metrics.evaluate_image_iter`); it returns small rows (matrices of a
  few hundred numbers), never voxel maps.
- **Seeds**: image ``name`` is computed with ``image_seed(seed, name)``, so the result of an
  image does not depend on which worker computes it, in which order, or in which (resumed)
  run; the tables of a serial run, a local cluster and an external cluster are identical
  (bit for bit when the workers use the same number of torch threads: torch's CPU
  reductions depend on it at the 1e-8 level).
- **Executors**: :class:`InProcess` (the default: this process, one image after another)
  and :class:`DaskExecutor` (``DaskExecutor.local(n)``: a ``LocalCluster`` of ``n`` worker
  processes with one task each and ``cores // n`` torch threads; ``DaskExecutor.connect(address)``:
  an existing cluster from ``dask scheduler`` / ``dask worker``, dask-jobqueue, Kubernetes;
  or ``DaskExecutor(client)``). On a worker, :func:`run_image` loads the model once per
  worker process (:func:`worker_model`, a cache keyed by path, device and the model files'
  sizes and dates) and reads the image by path.
- **Results folder** (:class:`ResultStore`): every finished image is written at once,
  atomically, to ``OUT/images/<key>.npz`` (Agg2Exp) or ``.json`` (evaluation); a failing
  image to ``OUT/images/<key>.failed.json`` with its error; ``OUT/run.json`` holds the run's
  settings. A rerun with the same ``OUT`` loads the finished images (their settings and
  input files must be unchanged) and computes only the others; failed images are retried;
  ``overwrite=True`` recomputes everything. The final tables are assembled from the rows.
- **Runs** (:class:`DatasetRun`): ``run.events(token)`` yields :class:`ImageProgress`
  (images done / failed / total, ETA, the image just finished) and returns the result;
  ``run.result()`` is the partial result at any time. A GUI iterates it in a worker thread.

Nothing here imports Dask, torch or tqdm at module import; Dask is needed only for
:class:`DaskExecutor` (``pip install 'napari-seg-explain[dask]'``).
"""
from __future__ import annotations

from ..seeds import image_seed
from .api import Agg2ExpRun, agg2exp, agg2exp_iter, evaluate, evaluate_iter
from .executors import (
           ClusterError,
           DaskExecutor,
           InProcess,
           cores,
           make_executor,
           run_image,
           scheduler_address,
           torch_threads,
           worker_model,
)
from .inputs import (
           ImageRecord,
           check_template,
           collect_images,
           expand_inputs,
           file_key,
           fill_template,
           read_manifest,
           records_from,
           stem,
)
from .kinds import Agg2ExpJob, EvaluateJob, Job
from .run import STEPS_PER_IMAGE, DatasetRun, ImageProgress, prepare_run, run_python
from .store import FAILURES_FILE, RESULTS_DIR, RUN_FILE, ResultStore, model_digest

__all__ = ["Agg2ExpRun", "agg2exp", "agg2exp_iter", "evaluate", "evaluate_iter", "image_seed",
           "ClusterError", "DaskExecutor", "InProcess", "cores", "make_executor", "run_image",
           "scheduler_address", "torch_threads", "worker_model", "ImageRecord", "check_template",
           "collect_images", "expand_inputs", "file_key", "fill_template", "read_manifest", "records_from",
           "stem", "Agg2ExpJob", "EvaluateJob", "Job", "STEPS_PER_IMAGE", "DatasetRun", "ImageProgress",
           "prepare_run", "run_python", "FAILURES_FILE", "RESULTS_DIR", "RUN_FILE", "ResultStore",
           "model_digest"]
