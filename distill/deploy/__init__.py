"""Mobile deployment: ONNX / TorchScript export with parity, int8 quantisation, and a FAISS face gallery.

Example::

    from distill.deploy import export_student, OnnxEmbedder, build_gallery, load_gallery, load_embedder

    export_student("runs/r1/student.pt", "student.onnx", "onnx", int8=True)   # + student.int8.onnx
    # model files and the loader live in distill.models; they are re-exported here
    emb = OnnxEmbedder("student.int8.onnx")           # an Embedder: evaluation can measure the file itself
    build_gallery(emb, "student.int8.onnx", "known_people/", "gallery/")
"""
from .cli import register_cli
from .export import FORMATS, PARITY_TOL, export_checkpoint, export_model, onnx_bytes, parity, torchscript_bytes
from .decision import Calibration, Score, Threshold, calibration_from_embeddings, calibration_from_report, decide
from .faces import align_files, align_rel_paths, default_lfw_images, probe_faces, sample_identity_images
from .gallery import (Gallery, GalleryError, build_gallery, check_model, load_gallery, search_gallery,
                      multi_face_decision)
from distill.models import (ExportError, ExportModel, OnnxEmbedder, StudentEmbedder, TorchScriptEmbedder,
                            load_embedder, load_export_model, onnx_cost, onnx_latency, read_metadata)

from .quantize import (FaceCalibrationReader, embedding_agreement, int8_path, load_pairs, quantize_int8,
                       verification_accuracy)
from .workflow import export_student

__all__ = [
    "register_cli", "export_student", "export_checkpoint", "export_model", "onnx_bytes", "torchscript_bytes",
    "parity", "FORMATS", "PARITY_TOL", "quantize_int8", "FaceCalibrationReader", "verification_accuracy",
    "embedding_agreement", "onnx_latency", "onnx_cost", "int8_path", "load_pairs", "OnnxEmbedder",
    "TorchScriptEmbedder",
    "StudentEmbedder", "ExportModel", "ExportError", "load_embedder", "load_export_model", "read_metadata",
    "Gallery", "GalleryError", "build_gallery", "load_gallery", "search_gallery", "check_model",
    "multi_face_decision", "Calibration", "Score", "Threshold", "decide", "calibration_from_report",
    "calibration_from_embeddings", "probe_faces", "align_files", "align_rel_paths", "default_lfw_images",
    "sample_identity_images",
]
