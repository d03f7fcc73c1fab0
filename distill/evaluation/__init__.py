"""Evaluation: numpy metrics, FAISS search, extraction, identification, cost, typed results and reports.

Example::

    from distill.evaluation import (PairIndex, extract_embeddings, evaluate_pairs, fidelity, identify,
                                    measure_cost, ModelResult, write_reports)
    emb = extract_embeddings(teacher, faces, cache_dir=cache)
    res = evaluate_pairs(emb, PairIndex(a, b, same, fold), normalized=teacher.normalized)  # VerificationResult
"""
from .cost import measure_cost, measure_throughput, state_dict_bytes
from .extract import cache_path, extract_embeddings, model_fingerprint
from .identify import gallery_probe_split, identify, identify_cross
from .metrics import (KFoldResult, accuracy_at, auc, best_threshold_accuracy, eer, kfold_accuracy, roc_curve,
                      tar_at_far)
from .report import build_report, compare_runs, versions, write_reports
from .results import (CostResult, FidelityResult, IdentificationResult, ModelResult, Report, ReportError, Roc,
                      ScoreSummary, TradeoffRow, VerificationResult, jsonable, load_report)
from .search import build_index, describe_index, exact_search_numpy, metric_for, pair_scores, search
from .tables import summary_table, text_table
from .verify import DEFAULT_FARS, PairIndex, evaluate_pairs, fidelity

__all__ = [
    "PairIndex", "DEFAULT_FARS", "evaluate_pairs", "fidelity",
    "extract_embeddings", "cache_path", "model_fingerprint",
    "roc_curve", "auc", "eer", "tar_at_far", "best_threshold_accuracy", "accuracy_at", "kfold_accuracy",
    "KFoldResult",
    "pair_scores", "build_index", "describe_index", "search", "exact_search_numpy", "metric_for",
    "identify", "identify_cross", "gallery_probe_split",
    "measure_cost", "measure_throughput", "state_dict_bytes",
    "ModelResult", "VerificationResult", "IdentificationResult", "CostResult", "FidelityResult", "Roc",
    "ScoreSummary", "TradeoffRow", "Report", "ReportError", "jsonable", "load_report",
    "write_reports", "build_report", "compare_runs", "versions", "summary_table", "text_table",
]
