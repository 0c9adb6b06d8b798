"""Every plotly figure and HTML view of the product, callable from a notebook as from the app.

The tabs never build plotly themselves: they call these functions with numbers from `gpt.inspection`,
`gpt.sampling` or a run's metrics, and show what comes back. Sections: training curves, attention and
heads, embeddings, per-token views, sampling.
"""

from __future__ import annotations
