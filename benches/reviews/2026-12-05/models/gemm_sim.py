import numpy as np, itertools
rng=np.random.default_rng(0)
def colmajor_view(mem, off, rows, cols, ld):
    # element (r,c) at off + r + c*ld
    M=np.empty((rows,cols))
    for r in range(rows):
        for c in range(cols): M[r,c]=mem[off+r+c*ld]
    return M
def lt_matmul(transa,transb,A,la,B,lb,C,lc,alpha,beta,batch,sa,sb,sc):
    for i in range(batch):
        a=colmajor_view(A,i*sa,*la); b=colmajor_view(B,i*sb,*lb)
        if transa: a=a.T
        if transb: b=b.T
        cm=colmajor_view(C,i*sc,*lc)
        d=alpha*(a@b)+beta*cm
        rows,cols,ld=lc
        for r in range(rows):
            for c in range(cols): C[i*sc+r+c*ld]=d[r,c]
def ours(m,n,k,ta,tb,alpha,beta,batch,lda,ldb,ldc,sa,sb,sc,A,B,C):
    # mirror gemm.rs
    la=(k,n) if tb else (n,k)
    lb=(m,k) if ta else (k,m)
    lt_matmul(tb,ta,B,(la[0],la[1],ldb),A,(lb[0],lb[1],lda),C,(n,m,ldc),alpha,beta,batch,sb,sa,sc)
ok=True
for ta,tb in itertools.product([0,1],[0,1]):
    m,n,k,batch=3,5,4,2
    pad=(1,2,3)
    sr_a=(m if ta else k); sr_b=(k if tb else n)
    lda,ldb,ldc=sr_a+pad[0],sr_b+pad[1],n+pad[2]
    rows_a=(k if ta else m); rows_b=(n if tb else k)
    sa,sb,sc=rows_a*lda+7,rows_b*ldb+5,m*ldc+3
    A=rng.standard_normal(batch*sa); B=rng.standard_normal(batch*sb); C=rng.standard_normal(batch*sc); C0=C.copy()
    ours(m,n,k,ta,tb,0.7,0.3,batch,lda,ldb,ldc,sa,sb,sc,A,B,C)
    for i in range(batch):
        Ar=np.array([[A[i*sa+r*lda+c] for c in range(sr_a)] for r in range(rows_a)])
        Br=np.array([[B[i*sb+r*ldb+c] for c in range(sr_b)] for r in range(rows_b)])
        opA=Ar.T if ta else Ar; opB=Br.T if tb else Br
        Cr0=np.array([[C0[i*sc+r*ldc+c] for c in range(n)] for r in range(m)])
        want=0.7*opA@opB+0.3*Cr0
        got=np.array([[C[i*sc+r*ldc+c] for c in range(n)] for r in range(m)])
        e=np.abs(got-want).max(); ok&=e<1e-12
        print(ta,tb,i,e)
print("ALL OK" if ok else "MISMATCH")
