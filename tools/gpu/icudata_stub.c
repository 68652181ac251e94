/* A stand-in for ICU's data library (libicudata.so.NN, 30 MB) in the GPU pack (tools/gpu/pack.sh): an ICU common-data
 * package with no entries, exported under the symbol libicuuc looks for (ICU_DATA_SYMBOL, e.g. icudt72_dat). What the
 * CLIP tokenizer uses (u_charType, u_charAge, the NFC normaliser, root-locale case mapping) is compiled into libicuuc
 * itself, so it works unchanged; anything that needs data files (converters, NFKC, break iterators) fails with
 * U_FILE_ACCESS_ERROR. pack.sh runs the tokenizer's tests against it before packing.
 * Layout: ICU's MappedData header (size, two magic bytes), its UDataInfo, 8 bytes of padding, then the table of contents
 * (entry count, reserved, one empty entry). */
#include <stdint.h>

#ifndef ICU_DATA_SYMBOL
#error "compile with -DICU_DATA_SYMBOL=icudtNN_dat (NN: the ICU major version)"
#endif

struct common_data {
  uint16_t header_size;
  uint8_t magic1, magic2;
  /* UDataInfo */
  uint16_t info_size, info_reserved;
  uint8_t is_big_endian, charset_family, sizeof_uchar, reserved_byte;
  uint8_t data_format[4], format_version[4], data_version[4];
  uint8_t padding[8];
  /* table of contents */
  uint32_t count, toc_reserved;
  uint32_t entry[4];
};

__attribute__((visibility("default"))) const struct common_data ICU_DATA_SYMBOL = {
    .header_size = 32,
    .magic1 = 0xda,
    .magic2 = 0x27,
    .info_size = 20,
    .is_big_endian = 0, /* x86-64 */
    .charset_family = 0, /* ASCII */
    .sizeof_uchar = 2,
    .data_format = {'C', 'm', 'n', 'D'},
    .format_version = {1, 0, 0, 0},
};
