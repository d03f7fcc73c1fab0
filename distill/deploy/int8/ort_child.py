"""Run one ONNX file on saved inputs with onnxruntime alone: ``python ort_child.py MODEL IN.npy OUT.npy [BATCH]``.

Executed by path (not ``-m``), so no facedistill package and no torch is imported: under an emulated CPU
(:mod:`distill.deploy.int8.emulate`) only numpy and onnxruntime run, which keeps emulation minutes short.
Writes the first output, ``(N, D)`` float32, to ``OUT.npy``; one intra-op thread (deterministic order).
"""
import sys

import numpy as np
import onnxruntime as ort


def main(argv: list[str]) -> None:
    """Read the model and inputs named in ``argv``, write the outputs."""
    model, inputs, out = argv[:3]
    batch = int(argv[3]) if len(argv) > 3 else 64
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name, x = sess.get_inputs()[0].name, np.load(inputs, mmap_mode="r")
    ys = [sess.run(None, {name: np.ascontiguousarray(x[i:i + batch], dtype=np.float32)})[0]
          for i in range(0, len(x), batch)]
    np.save(out, np.concatenate(ys).astype(np.float32))


if __name__ == "__main__":
    main(sys.argv[1:])
