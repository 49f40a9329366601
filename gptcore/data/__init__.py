"""The data the pipelines read: corpus sources and the train/validation split (corpus), token files
(token_files), the batches of windows and their samplers and loaders (loaders), labelled tables for a
classifier (labelled), instruction entries (instructions). Only loaders needs torch: the prepare and
tokenize stages start without it.

Imports: the base, model.
"""
