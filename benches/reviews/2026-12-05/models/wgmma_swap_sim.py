exec(open(__file__.replace('wgmma_swap_sim.py', 'wgmma_sim.py')).read().split("rng=np.random")[0])
rng=np.random.default_rng(7)
def rnd(*s): return rng.integers(-3,4,size=s).astype(float)
for (m,n_in,n_out,r,base,boff) in [(130,64,136,1,True,16),(70,200,72,8,False,1040),(129,8,8,37,True,0),(64,1000,264,64,True,512)]:
    stride=-(-r//8)*8
    x=rnd(m,n_in); W0=rnd(n_in,n_out); Vt=rnd(r+3,n_out); Ut=rnd(r+3,n_in)
    t=np.zeros((m,stride)); t[:,:r]=rnd(m,r); b=rnd(n_out)
    segs=[(x,n_in,W0,n_out,n_in if base else 0,False),(t,stride,Vt,n_out,r,False)]
    ref=(x@W0 if base else 0)+t[:,:r]@Vt[:r]+b
    C=run(segs,m,n_out,n_out,b,base_off=boff)
    dy=rnd(m,n_out); s=np.zeros((m,stride)); s[:,:r]=rnd(m,r)
    refd=(dy@W0.T if base else 0)+s[:,:r]@Ut[:r]
    D=run([(dy,n_out,W0,n_out,n_out if base else 0,True),(s,stride,Ut,n_in,r,False)],m,n_in,n_in,None,base_off=boff)
    print((m,n_in,n_out,r,base,boff),"y err",np.abs(C-ref).max(),"dx err",np.abs(D-refd).max())
