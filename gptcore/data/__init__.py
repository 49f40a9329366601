"""The data the pipelines read: corpus sources and the book's train/validation split (corpus), document sources
(documents), token files (token_files) and token shards (shards), the batches of windows and their samplers and
loaders (loaders), labelled tables for a classifier (labelled), instruction entries (instructions). Only loaders
needs torch: the prepare and tokenize stages start without it.

Imports: the base, model.
"""
