"""Pruning (the documents, II): magnitude pruning (Han et al. 2015), filter pruning by the Taylor
criterion (Molchanov et al. 2017), structured sparsity by group lasso (Wen et al. 2016)."""
