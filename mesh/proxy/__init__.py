"""The asyncio node proxy: a thin driver of mesh.core."""
