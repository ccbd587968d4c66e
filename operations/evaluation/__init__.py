"""Chinese-CLIP style evaluation: features, exact top-k, recall, store cross-check.

Entry points (see each module): `extract.extract_image_features`,
`extract.extract_text_features`, `knn.exact_topk`, `knn.predict_files`,
`recall.evaluate`, `store_predict.load_features_into_store`,
`store_predict.predict_files_via_store`, `crosscheck.crosscheck`; the
command line is `python -m operations.evaluation.cli`.
"""
