"""Word embeddings: word2vec (CBOW / skip-gram, hierarchical softmax / negative sampling),
fastText subword vectors and GloVe, trained by a small C kernel (Hogwild threads) and measured
against gensim (docs/embed.md).

corpus.py     sentences from the data stage's packaged sources (jieba for Chinese) or text files
vocab.py      counted, sorted vocabulary; subsampling keep-probabilities; the negative-sampling alias table
huffman.py    Huffman codes and inner-node paths for hierarchical softmax
subwords.py   fastText character n-grams and their FNV-1a bucket ids
kernel.py     build/load the C training kernel (train_kernel.c); None when it cannot be built
reference.py  the same word2vec/fastText loop in plain Python/numpy (fallback and test oracle)
word2vec.py   training word2vec and fastText models
glove.py      co-occurrence counting and GloVe's weighted least squares (AdaGrad)
vectors.py    trained vectors: lookup (OOV through n-grams), nearest neighbours
formats.py    word2vec text/binary and fastText .vec files
evaluate.py   analogies (3CosAdd / 3CosMul), WordSim-353 / SimLex-999 Spearman, PCA plot
commands.py   CLI verbs `llmlab embed train|eval|nearest|analogy`
"""
