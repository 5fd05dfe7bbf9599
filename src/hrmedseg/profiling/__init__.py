"""Parameters, MACs, peak training memory and throughput of any registered model."""
from .macs import MacCount, count_macs, count_macs_modules, count_macs_ops
from .profile import ProfileResult, format_table, profile_model

__all__ = ["MacCount", "count_macs", "count_macs_modules", "count_macs_ops", "ProfileResult",
           "format_table", "profile_model"]
