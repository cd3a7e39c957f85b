//! Entry points for the fuzz targets in `fuzz/` and the corpus replay tests. Not a stable
//! API: hidden from the docs.
