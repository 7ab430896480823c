"""Media: image references (files, inline data, PDF pages, dataset cells) and videos, read from
their headers for planning and decoded only when a sample is encoded."""
