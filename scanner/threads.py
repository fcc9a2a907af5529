"""Thread budgets of the compute libraries a scan uses (TensorFlow, numpy's BLAS, OpenCV, the video decoder).

By default each library uses every core: the lowest latency for one scan. A worker that runs one scan per
process, with as many processes as cores, scales better with one thread each (`MESOSCAN_COMPUTE_THREADS=1`):
threads of several processes competing for the same cores only add switching.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


def limit_threads(threads: int | None, tensorflow: bool = True) -> None:
    """Cap OpenCV's and numpy's BLAS thread pools at `threads` (None: leave the libraries' defaults), and
    TensorFlow's when the model runs on it (`tensorflow`) or the process has imported it already.

    TensorFlow accepts this only before it runs its first operation; later calls keep what it has and log why.
    """
    if threads is None:
        return
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(threads)
    threadpool_limits(threads, user_api="blas")  # the numpy Meso-4's matmuls
    if not tensorflow and "tensorflow" not in sys.modules:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as exc:  # TensorFlow already initialised in this process
        if tf.config.threading.get_intra_op_parallelism_threads() != threads:
            log.warning("TensorFlow keeps its thread pools: %s", exc)
