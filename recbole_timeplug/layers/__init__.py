"""Building blocks shared by the plugin models, each written once and tested against a simple reference.

- ``time_interval``: personalised time-interval matrices and bucketed interval attention (TiSASRec).
- ``ssd``: the state-space-duality scan (chunked PyTorch reference + optional mamba-ssm Triton kernel) (TiM4Rec).
- ``sparse_attention``: alpha-entmax and low-rank interest attention (MASAN).
- ``interest``: multi-interest extraction and interest routing (TiMiRec).
- ``neighbor_index``: leak-free, time-ordered item-neighbour lookup (ARERec).
- ``dropout``: nn.Dropout with a cheaper CPU mask (TiM4Rec).
"""
