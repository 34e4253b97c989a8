"""Reading binaries: ELF symbols, call frame information, instruction decoding."""
