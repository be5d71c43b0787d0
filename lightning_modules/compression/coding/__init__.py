"""Weight sharing and coding (the documents, II): k-means weight sharing, sparse relative indices,
Huffman coding, and the Deep Compression file that holds them (Han, Mao & Dally 2016)."""
