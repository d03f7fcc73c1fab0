"""Model files: the deployable student file, exported ONNX/TorchScript graphs, and the one loader.

This package sits below both the pipeline and deployment: training writes student files with
:func:`save_student`; evaluation, export and galleries read any model with :func:`load_embedder`.

Example::

    from distill.models import load_embedder, load_student, save_student

    saved = load_student("runs/r1/student.pt")          # SavedStudent: module, spec, preprocessing, record
    emb = load_embedder("runs/r1/student.onnx")          # or student.pt, model.ts, "teacher:dlib_resnet"
"""
from .exported import (INPUT_DOC, INPUT_NAME, METADATA_FORMAT, METADATA_KEY, OUTPUT_NAME, ExportError,
                       ExportModel, OnnxEmbedder, StudentEmbedder, TorchScriptEmbedder, export_graph, flat_metadata,
                       load_export_model, model_identity, onnx_cost, onnx_latency, preprocessing_of, read_metadata,
                       student_embedder)
from .load import TEACHER_PREFIX, load_embedder
from .student import (STUDENT_FILE, STUDENT_FORMAT, SavedStudent, StudentFileError, StudentSpec, display_name,
                      load_student, output_contract, read_student_record, save_student, warm_start)

__all__ = [
    "load_embedder", "TEACHER_PREFIX",
    "StudentSpec", "SavedStudent", "save_student", "load_student", "read_student_record", "output_contract",
    "display_name", "StudentFileError", "STUDENT_FILE", "STUDENT_FORMAT", "warm_start",
    "OnnxEmbedder", "TorchScriptEmbedder", "StudentEmbedder", "ExportModel", "ExportError", "export_graph",
    "load_export_model", "student_embedder", "read_metadata", "flat_metadata", "preprocessing_of", "model_identity",
    "onnx_latency", "onnx_cost", "METADATA_FORMAT", "METADATA_KEY", "INPUT_NAME", "OUTPUT_NAME", "INPUT_DOC",
]
